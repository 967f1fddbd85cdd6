"""Class Adaptive Label Smoothing (CALS): the class-adaptive penalty on logit distances.

Liu, Rony, Galdran, Dolz, Ben Ayed, "Class Adaptive Network Calibration", CVPR 2023
(arXiv 2211.15088); the maths is restated in ``docs/method.md``, and the section each piece
implements is named in its docstring.

- :func:`phr`, :func:`p2`, :func:`p3`: the penalties of §2 and their derivatives;
- :func:`cals_penalty`: the loss term in plain autograd torch, *the* definition (§1-§2);
- :class:`CALSLoss`: the module configs use. It computes :func:`cals_penalty` and its
  gradient with the fused kernel of :mod:`mmcals.losses._cals_kernel` (one pass, one
  logits-sized tensor kept for backward), holds λ and ρ as buffers and applies the multiplier
  update of §3 that :class:`mmcals.hooks.CALSHook` calls; the statistics of that update and
  the diagnostics of §5 travel as :class:`~mmcals.losses.constraint_stats.ConstraintStats`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS
from torch import Tensor, nn

from ._cals_kernel import KernelConfig, constraint_statistics, loss_and_gradient
from .constraint_stats import ConstraintStats

# CPU path: devices where backward hands over the saved gradient without a copy.
_ZERO_COPY_BACKWARD_DEVICES = ('cpu',)


def phr(h: Tensor, lam: Tensor, rho: Tensor, value: bool = True):
    """Powell–Hestenes–Rockafellar penalty (docs/method.md §2): returns ``(P or None, P')``.

    With ``x = λ + ρh``: ``P = (x² - λ²) / (2ρ)``, ``P' = x`` for ``x >= 0``;
    ``P = -λ² / (2ρ)``, ``P' = 0`` otherwise. Both branches are ``P = (max(x, 0)² - λ²) / (2ρ)``.
    """
    derivative = torch.addcmul(lam, rho, h).clamp_min_(0)
    if not value:
        return None, derivative
    return (derivative * derivative - lam * lam) / (2 * rho), derivative


def p2(h: Tensor, lam: Tensor, rho: Tensor, value: bool = True):
    """The ``p2`` penalty (docs/method.md §2): returns ``(P or None, P')``.

    ``h >= 0``: ``P = λh + λρh² + ρ²h³/6``, ``P' = λ + 2λρh + ρ²h²/2``;
    ``h < 0``: ``P = λh / (1 - ρh)``, ``P' = λ / (1 - ρh)²``.
    Written with ``h = h⁻ + h⁺`` so one expression covers both branches without evaluating
    either outside its domain.
    """
    neg, pos = h.clamp_max(0), h.clamp_min(0)
    inv = 1 / (1 - rho * neg)  # 1 where h >= 0
    t = rho * pos  # 0 where h < 0
    derivative = lam * inv * inv + t * (2 * lam + t / 2)
    if not value:
        return None, derivative
    return lam * neg * inv + pos * (lam + t * (lam + t / 6)), derivative


def p3(h: Tensor, lam: Tensor, rho: Tensor, value: bool = True):
    """The ``p3`` penalty (docs/method.md §2): returns ``(P or None, P')``.

    ``h >= 0``: ``P = λh + λρh²``, ``P' = λ + 2λρh``; ``h < 0``: as :func:`p2`.
    """
    neg, pos = h.clamp_max(0), h.clamp_min(0)
    inv = 1 / (1 - rho * neg)
    t = rho * pos
    derivative = lam * inv * inv + 2 * lam * t
    if not value:
        return None, derivative
    return lam * neg * inv + lam * pos * (1 + t), derivative


PENALTIES: dict[str, Callable] = {'phr': phr, 'p2': p2, 'p3': p3}


def cals_penalty(logits: Tensor, labels: Tensor, lam: Tensor, rho: Tensor,
                 margin: float = 10.0, normalize: bool = True, penalty: str = 'phr',
                 ignore_index: int = 255, loss_weight: float = 1.0,
                 weight: Tensor | None = None, penalise_ignored: bool = False) -> Tensor:
    """The CALS loss term, defined in plain autograd torch (docs/method.md §1-§2).

    This is the definition: :class:`CALSLoss` computes the same value and gradient with the
    fused, chunked kernel of :mod:`mmcals.losses._cals_kernel`, and the tests hold the two
    together. Use this one to read, check or change the maths; it takes several times the
    kernel's time and memory.

    Args:
        logits (Tensor): (N, C, H, W) logits ``z``.
        labels (Tensor): (N, H, W) labels.
        lam (Tensor): (C,) multipliers λ.
        rho (Tensor): (C,) penalty parameters ρ.
        margin (float): Margin ``m``. Default: 10.
        normalize (bool): ``h = (d - m) / m`` (True) or ``h = d - m``. Default: True.
        penalty (str): ``'phr'``, ``'p2'`` or ``'p3'``. Default: ``'phr'``.
        ignore_index (int): Label of pixels that are not penalised. Default: 255.
        loss_weight (float): Weight of the term. Default: 1.0.
        weight (Tensor, optional): (N, H, W) per-pixel weights of the terms (not of the
            denominator).
        penalise_ignored (bool): Penalise ignored pixels too. Default: False.

    Returns:
        Tensor: ``loss_weight · Σ_i w_i Σ_k P(h_ik; λ_k, ρ_k) / (N_valid · C)``.
    """
    z = logits.permute(0, 2, 3, 1)  # classes last
    winner = z.argmax(-1, keepdim=True)  # the first maximum: the well-defined choice for ties
    distance = z.gather(-1, winner) - z  # d_k = z_a - z_k >= 0
    h = (distance - margin) / margin if normalize else distance - margin
    lam = lam.to(z.dtype)
    rho = rho.to(z.dtype)
    if penalty == 'phr':
        x = lam + rho * h
        value = torch.where(x >= 0, (x * x - lam * lam) / (2 * rho), -lam * lam / (2 * rho))
    else:
        negative = lam * h / (1 - rho * h.clamp(max=0))  # clamp: keeps the unused branch finite
        positive = lam * h + lam * rho * h ** 2
        if penalty == 'p2':
            positive = positive + rho ** 2 * h ** 3 / 6
        value = torch.where(h >= 0, positive, negative)
    valid = torch.ones_like(labels, dtype=torch.bool) if penalise_ignored else (
        labels != ignore_index)
    pixel = valid.to(z.dtype) if weight is None else valid.to(z.dtype) * weight
    total = (value.sum(-1) * pixel).sum()
    return loss_weight * total / (valid.sum().clamp_min(1) * z.shape[-1])


class _CALSFunction(torch.autograd.Function):
    """Loss value in forward, closed-form gradient (docs/method.md §2) saved for backward."""

    @staticmethod
    def forward(ctx, logits: Tensor, cfg: KernelConfig, target: Tensor, pixel_weight: Tensor,
                lam: Tensor, rho: Tensor, scale: Tensor, stats_sink: list | None):
        want_grad = ctx.needs_input_grad[0]
        grad_scale = scale if want_grad else None

        def run(mask_ignored: bool):
            stats = None if stats_sink is None else ConstraintStats.zeros(
                lam.shape[0], logits.device)
            penalty_sum, grad = loss_and_gradient(cfg, logits, target, pixel_weight, lam, rho,
                                                  grad_scale, stats, mask_ignored)
            return penalty_sum.sum(), grad, stats

        total, grad, stats = run(False)
        if not cfg.penalise_ignored and not bool(torch.isfinite(total)):
            # Non-finite logits (fp16 overflow under AMP): only valid pixels may carry them
            # into the loss, as with cross-entropy; redo the pass keeping ignored ones out.
            total, grad, stats = run(True)
        if stats_sink is not None:
            stats_sink.append(stats)
        ctx.input_dtype = logits.dtype
        if want_grad:
            ctx.save_for_backward(grad)
        return (total * scale).to(lam.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        if (grad.device.type in _ZERO_COPY_BACKWARD_DEVICES and grad.dtype == ctx.input_dtype
                and bool(grad_output == 1)):
            # CPU path: the usual case without AMP (the loss is summed into the total). Hand
            # over the saved gradient instead of a logits-sized copy (autograd never writes
            # into it). On the CPU the copy makes the CALS forward+backward take 1.51x the
            # time (benchmarks/bench_cals_loss.py, "CPU paths": 0.57 s against 0.38 s); on
            # accelerators the copy is cheap and the check's sync would cost more.
            grad_logits = grad
        else:
            grad_logits = torch.empty_like(grad, dtype=ctx.input_dtype)
            torch.mul(grad, grad_output.to(grad.dtype), out=grad_logits)
        return grad_logits, None, None, None, None, None, None, None


@MODELS.register_module()
class CALSLoss(nn.Module):
    """Class Adaptive Label Smoothing penalty (Liu et al., CVPR 2023; docs/method.md).

    Goes into a decode head's ``loss_decode`` list next to ``CrossEntropyLoss``. For each
    valid pixel with logits ``z`` (already resized to the label size by the head), winner
    ``a = argmax z`` and ``h_k = (z_a - z_k - m) / m`` (§1), the loss is
    ``loss_weight · mean over valid pixels and classes of P(h_k; λ_k, ρ_k)`` (§2).
    λ and ρ are per-class buffers (in ``state_dict``, so checkpoints carry them), changed only
    by :class:`mmcals.hooks.CALSHook` at its update points (§3).

    Args:
        num_classes (int): Number of classes ``C``; the logits must have ``C`` channels.
        margin (float): Margin ``m > 0`` on logit distances. Default: 10.
        normalize (bool): Use ``h = (d - m) / m`` (True) or ``h = d - m``. Default: True.
        penalty (str): ``'phr'``, ``'p2'`` or ``'p3'``. Default: ``'phr'``.
        loss_weight (float): Weight of the loss. Default: 1.0.
        lambda_min (float): Lower bound of λ (> 0). Default: 1e-6.
        lambda_max (float): Upper bound of λ. Default: 1e6.
        lambda_init (float, optional): Initial λ; None means ``lambda_min``.
        rho_min (float): Lower bound of ρ (> 0). Default: 1.0.
        rho_max (float): Upper bound of ρ. Default: 10.0.
        rho_init (float, optional): Initial ρ; None means ``rho_min``.
        rho_gamma (float): Growth factor ``γ >= 1`` of ρ. Default: 1.2.
        rho_tau (float): Tolerance ``τ > 0`` of the ρ growth test. Default: 0.9.
        rho_interval (int): Grow ρ every this many updates; ``<= 0`` never. Default: 10.
        penalise_ignored (bool): Also penalise pixels labelled ``ignore_index`` (the reference
            code does); they then count in the mean and in the statistics. Default: False.
        loss_name (str): Key in the loss dict; must start with ``loss_``. Default:
            ``'loss_cals'``.

    Under ``CALSHook(source='train')`` the loss also gathers the per-class statistics of §3
    from the quantities its forward pass computes anyway; see
    :attr:`collect_train_statistics` and :meth:`pop_train_statistics`.
    """

    def __init__(self,
                 num_classes: int,
                 margin: float = 10.0,
                 normalize: bool = True,
                 penalty: str = 'phr',
                 loss_weight: float = 1.0,
                 lambda_min: float = 1e-6,
                 lambda_max: float = 1e6,
                 lambda_init: float | None = None,
                 rho_min: float = 1.0,
                 rho_max: float = 10.0,
                 rho_init: float | None = None,
                 rho_gamma: float = 1.2,
                 rho_tau: float = 0.9,
                 rho_interval: int = 10,
                 penalise_ignored: bool = False,
                 loss_name: str = 'loss_cals'):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes={num_classes!r}: give the number of classes of the '
                             'decode head (an int >= 1)')
        if not margin > 0:
            raise ValueError(f'margin={margin!r}: the margin on logit distances must be > 0')
        if penalty not in PENALTIES:
            raise ValueError(f'penalty={penalty!r} is unknown: use one of {sorted(PENALTIES)}')
        lambda_init = lambda_min if lambda_init is None else lambda_init
        rho_init = rho_min if rho_init is None else rho_init
        if not 0 < lambda_min <= lambda_init <= lambda_max:
            raise ValueError(f'need 0 < lambda_min <= lambda_init <= lambda_max, got '
                             f'{lambda_min}, {lambda_init}, {lambda_max}')
        if not 0 < rho_min <= rho_init <= rho_max:
            raise ValueError(f'need 0 < rho_min <= rho_init <= rho_max, got '
                             f'{rho_min}, {rho_init}, {rho_max}')
        if not rho_gamma >= 1:
            raise ValueError(f'rho_gamma={rho_gamma!r}: the growth factor of ρ must be >= 1')
        if not rho_tau > 0:
            raise ValueError(f'rho_tau={rho_tau!r}: the tolerance of the ρ test must be > 0')
        if not str(loss_name).startswith('loss_'):
            raise ValueError(f'loss_name={loss_name!r} must start with "loss_" for mmseg to '
                             'add it to the total loss')
        self.num_classes = num_classes
        self.margin = float(margin)
        self.normalize = bool(normalize)
        self.penalty = penalty
        self.loss_weight = float(loss_weight)
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.rho_min, self.rho_max = float(rho_min), float(rho_max)
        self.rho_gamma, self.rho_tau = float(rho_gamma), float(rho_tau)
        self.rho_interval = int(rho_interval)
        self.penalise_ignored = bool(penalise_ignored)
        self._loss_name = loss_name
        # float64 state: the multipliers are means over millions of pixels (docs/method.md §3).
        self.register_buffer('lambda_', torch.full((num_classes,), float(lambda_init),
                                                   dtype=torch.float64))
        self.register_buffer('rho', torch.full((num_classes,), float(rho_init),
                                               dtype=torch.float64))
        self.register_buffer('prev_constraint', torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))
        #: Set by ``CALSHook(source='train')``: gather §3 statistics in training forwards.
        self.collect_train_statistics = False
        # Rank-local sums since the last pop_train_statistics(); not buffers, because DDP
        # broadcasts buffers from rank 0 at every forward and would erase the other ranks' sums.
        self._train_stats: ConstraintStats | None = None

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, margin={self.margin}, '
                f'normalize={self.normalize}, penalty={self.penalty!r}, '
                f'loss_weight={self.loss_weight}, penalise_ignored={self.penalise_ignored}')

    def _config(self, ignore_index: int) -> KernelConfig:
        return KernelConfig(PENALTIES[self.penalty], self.margin, self.normalize,
                            int(ignore_index), self.penalise_ignored, self.lambda_min,
                            self.lambda_max, fused_phr=self.penalty == 'phr')

    def _check_inputs(self, logits: Tensor, target: Tensor) -> None:
        if logits.dim() != 4:
            raise ValueError(f'CALSLoss expects logits (N, C, H, W), got shape '
                             f'{tuple(logits.shape)}')
        if logits.shape[1] != self.num_classes:
            raise ValueError(f'CALSLoss got logits with {logits.shape[1]} classes but was '
                             f'built with num_classes={self.num_classes}: set num_classes to '
                             "the decode head's num_classes")
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f'CALSLoss expects labels of shape {expected} for logits '
                             f'{tuple(logits.shape)}, got {tuple(target.shape)}')
        if not logits.is_floating_point():
            raise ValueError(f'CALSLoss expects floating-point logits, got {logits.dtype}')

    def _compute_dtype(self, logits: Tensor) -> torch.dtype:
        return torch.promote_types(logits.dtype, torch.float32)

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Tensor | None = None,
                ignore_index: int = 255,
                **kwargs) -> Tensor:
        """The CALS penalty of docs/method.md §2: the value of :func:`cals_penalty`.

        Args:
            pred (Tensor): Logits (N, C, H, W), any floating dtype; computed in float32 (or
                float64 for float64 input).
            target (Tensor): Labels (N, H, W).
            weight (Tensor, optional): Per-pixel weights (N, H, W), e.g. from a pixel sampler;
                they scale each pixel's term and its gradient, not the denominator.
            ignore_index (int): Label of pixels that are not penalised. Default: 255.
            **kwargs: Accepted for mmseg's loss interface and unused.

        Returns:
            Tensor: Scalar loss; 0 with a zero gradient when no pixel is valid. Non-finite
            logits on a valid pixel make it non-finite, as cross-entropy does.
        """
        self._check_inputs(pred, target)
        dtype = self._compute_dtype(pred)
        num, num_classes = pred.shape[:2]
        target = target.reshape(num, -1)
        penalised = (torch.ones_like(target, dtype=torch.bool) if self.penalise_ignored
                     else target != ignore_index)
        pixel_weight = penalised.to(dtype)
        if weight is not None:
            if weight.numel() != target.numel():
                raise ValueError(f'CALSLoss weight has shape {tuple(weight.shape)}; expected '
                                 f'one weight per pixel, {tuple(target.shape)}')
            pixel_weight = pixel_weight * weight.reshape(num, -1).to(dtype)
        count = penalised.sum().clamp_min(1).to(dtype)
        scale = self.loss_weight / (count * num_classes)
        sink = [] if (self.collect_train_statistics and self.training) else None
        loss = _CALSFunction.apply(
            pred.reshape(num, num_classes, -1), self._config(ignore_index), target,
            pixel_weight, self.lambda_.to(dtype), self.rho.to(dtype), scale, sink)
        if sink:
            self._add_train_statistics(sink[0])
        return loss

    @torch.no_grad()
    def constraint_statistics(self, logits: Tensor, labels: Tensor,
                              ignore_index: int = 255) -> ConstraintStats:
        """Statistics for the multiplier update (docs/method.md §3) and the diagnostics (§5).

        Computed with the current λ and ρ over the pixels the loss penalises whose logits are
        all finite.

        Args:
            logits (Tensor): (N, C, H, W) or (C, H, W).
            labels (Tensor): (N, H, W) or (H, W) / (1, H, W) for a single image.
            ignore_index (int): Label of pixels left out (unless ``penalise_ignored``).

        Returns:
            ConstraintStats: float64 sums, on the device of ``logits``.
        """
        if logits.dim() == 3:
            logits = logits[None]
            labels = labels[None] if labels.dim() == 2 else labels
        self._check_inputs(logits, labels)
        dtype = self._compute_dtype(logits)
        num, num_classes = logits.shape[:2]
        return constraint_statistics(
            self._config(ignore_index), logits.reshape(num, num_classes, -1),
            labels.reshape(num, -1), self.lambda_.to(dtype), self.rho.to(dtype))

    def _add_train_statistics(self, stats: ConstraintStats) -> None:
        self._train_stats = stats if self._train_stats is None else self._train_stats + stats

    def pop_train_statistics(self) -> ConstraintStats:
        """Return and reset the statistics gathered by training forwards since the last call.

        Same content as :meth:`constraint_statistics`; zeros if nothing was gathered.
        """
        stats = self._train_stats
        self._train_stats = None
        if stats is None:
            stats = ConstraintStats.zeros(self.num_classes, self.lambda_.device)
        return stats

    @torch.no_grad()
    def update_multipliers(self, stats: ConstraintStats,
                           class_names: Sequence[str] | None = None) -> bool:
        """Apply the multiplier and penalty-parameter update of docs/method.md §3.

        ``λ ← clamp(G, λ_min, λ_max)`` with ``(G, H) = stats.means()``; every
        ``rho_interval`` updates ``ρ_k ← min(γρ_k, ρ_max)`` where
        ``H_k > τ · max(H_prev_k, 0)``; ``H_prev ← H``. The first update has no ``H_prev``
        and never grows ρ. Classes whose λ reaches ``λ_max`` in this update are named in a
        warning: the rule follows the statistics of one update, so one exploding batch can
        pin λ at the bound.

        Args:
            stats (ConstraintStats): Statistics of all the pixels of this update (already
                reduced across ranks).
            class_names (Sequence[str], optional): For warnings.

        Returns:
            bool: False, leaving λ, ρ and ``H_prev`` unchanged with a warning, when there are
            no pixels or a statistic is not finite.
        """
        if stats.num_classes != self.num_classes:
            raise ValueError(f'update_multipliers expects statistics of {self.num_classes} '
                             f'classes, got {stats.num_classes}')
        count = float(stats.count)
        if not count > 0:
            print_log(f'CALS: no pixels were gathered (count={count:g}); λ and ρ keep their '
                      'values', logger='current', level=logging.WARNING)
            return False
        mean_derivative, mean_constraint = stats.means()
        bad = ~(torch.isfinite(mean_derivative) & torch.isfinite(mean_constraint))
        if bool(bad.any()):
            names = self._names(bad, class_names)
            print_log(f'CALS: non-finite statistics for {len(names)} of {self.num_classes} '
                      f'classes ({", ".join(names)}) over {count:.0f} pixels; λ and ρ keep '
                      'their values', logger='current', level=logging.WARNING)
            return False
        device = self.lambda_.device
        mean_derivative = mean_derivative.to(device)
        mean_constraint = mean_constraint.to(device)
        updates = int(self.num_updates) + 1
        if self.rho_interval > 0 and updates > 1 and updates % self.rho_interval == 0:
            grow = mean_constraint > self.rho_tau * self.prev_constraint.clamp_min(0)
            self.rho.copy_(torch.where(grow, (self.rho * self.rho_gamma).clamp_max(
                self.rho_max), self.rho))
        previous = self.lambda_.clone()
        self.lambda_.copy_(mean_derivative.clamp(self.lambda_min, self.lambda_max))
        self.prev_constraint.copy_(mean_constraint)
        self.num_updates.fill_(updates)
        pinned = (self.lambda_ >= self.lambda_max) & (previous < self.lambda_max)
        if bool(pinned.any()):
            names = self._names(pinned, class_names)
            before = ', '.join(f'{float(v):.3g}' for v in previous[pinned])
            print_log(f'CALS: λ jumped to lambda_max={self.lambda_max:g} in one update for '
                      f'{len(names)} of {self.num_classes} classes ({", ".join(names)}; λ '
                      f'was {before}) over {count:.0f} pixels: one update follows its '
                      'statistics whole, so a single exploding batch can pin λ at the bound '
                      '(see docs/method.md §3)', logger='current', level=logging.WARNING)
        return True

    @staticmethod
    def _names(mask: Tensor, class_names: Sequence[str] | None) -> list[str]:
        indices = mask.nonzero().flatten().tolist()
        return [f'{class_names[i]!r} ({i})' if class_names and i < len(class_names) else str(i)
                for i in indices]
