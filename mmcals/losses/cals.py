"""Class Adaptive Label Smoothing (CALS): the class-adaptive penalty on logit distances.

Liu, Rony, Galdran, Dolz, Ben Ayed, "Class Adaptive Network Calibration", CVPR 2023
(arXiv 2211.15088). The maths is restated in ``shared/docs/cals.md``; the section each piece
implements is named in its docstring.

The loss value and its gradient are computed together, in one pass over the logits, by a custom
autograd function using the closed-form gradient of cals.md §2. The pass runs over chunks of
pixels so that its float32 temporaries stay small (and in cache); only the gradient, one
logits-sized float32 tensor, is kept for the backward pass. Computing in float32 also under
AMP keeps fp16/bf16 logits from overflowing the cubic ``p2`` term.

λ and ρ are buffers updated by :class:`mmcals.hooks.CALSHook` through
:meth:`CALSLoss.update_multipliers`, never by the optimiser.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS
from torch import Tensor, nn

# Pixels per chunk = elements // num_classes. On the CPU 4 MiB per float32 temporary keeps the
# elementwise steps of a chunk in cache while each step is still large enough for its threads
# (benchmarks/bench_cals_loss.py); accelerators want fewer, larger launches.
_CHUNK_ELEMENTS = {'cpu': 1 << 20}
_CHUNK_ELEMENTS_DEFAULT = 1 << 22
# Devices where the winner is read off the exact zeros of z_a - z (see _add_to_winner).
_SIGN_WINNER_DEVICES = ('cpu',)


def phr(h: Tensor, lam: Tensor, rho: Tensor, value: bool = True):
    """Powell–Hestenes–Rockafellar penalty (cals.md §2): returns ``(P or None, P')``.

    With ``x = λ + ρh``: ``P = (x² - λ²) / (2ρ)``, ``P' = x`` for ``x >= 0``;
    ``P = -λ² / (2ρ)``, ``P' = 0`` otherwise. Both branches are ``P = (max(x, 0)² - λ²) / (2ρ)``.
    """
    derivative = torch.addcmul(lam, rho, h).clamp_min_(0)
    if not value:
        return None, derivative
    return (derivative * derivative - lam * lam) / (2 * rho), derivative


def p2(h: Tensor, lam: Tensor, rho: Tensor, value: bool = True):
    """The ``p2`` penalty (cals.md §2): returns ``(P or None, P')``.

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
    """The ``p3`` penalty (cals.md §2): returns ``(P or None, P')``.

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


@dataclass(frozen=True)
class _PassConfig:
    penalty: Callable
    margin: float
    normalize: bool
    ignore_index: int
    penalise_ignored: bool
    lambda_min: float
    lambda_max: float


def _add_to_winner(grad: Tensor, amount: Tensor, distance: Tensor, logits: Tensor) -> None:
    """``grad[a] += amount`` at each pixel's winner ``a``, the first maximum as torch.max picks.

    On the CPU torch's index-returning reductions cost several times the rest of the pass, so
    the winner is read off ``distance = z_a - z``, which is exactly 0 at the maxima:
    ``1 - sign(distance)`` is the one-hot winner unless a pixel has tied maxima; chunks with
    ties take torch.max's index. ``distance`` is overwritten.
    """
    if logits.device.type in _SIGN_WINNER_DEVICES:
        not_winner = distance.sign_()
        ties = not_winner.sum(0) < distance.shape[0] - 1
        if not bool(ties.any()):
            grad.addcmul_(not_winner.sub_(1), amount, value=-1)
            return
    grad.scatter_add_(0, logits.max(0).indices[None], amount[None])


def _penalty_pass(*args, **kwargs):
    """:func:`_chunked_pass` with autocast off: under AMP it would run the products in fp16."""
    with torch.autocast(device_type=args[1].device.type, enabled=False):
        return _chunked_pass(*args, **kwargs)


def _chunked_pass(cfg: _PassConfig, logits: Tensor, target: Tensor, pixel_weight: Tensor,
                  lam: Tensor, rho: Tensor, grad_scale: Tensor | None, want_loss: bool,
                  want_stats: bool, mask_ignored: bool = False):
    """One chunked pass over ``logits`` (N, C, P) computing what is asked for (cals.md §1-§3).

    Returns ``(penalty_sum, grad, stats)``:

    - ``penalty_sum``: (C,) float64 Σ over pixels of ``pixel_weight · P(h_k)`` (or None);
    - ``grad``: ``∂(grad_scale · Σ pixel_weight · P) / ∂logits`` in the compute dtype, when
      ``grad_scale`` is given: ``-g_k`` for the non-winners and ``Σ_{k≠a} g_k`` for the
      winner (cals.md §2);
    - ``stats``: float64 ``(Σ clamp(P', λ_min, λ_max), Σ h, count)`` per class over the
      penalised pixels whose logits are all finite (or None).

    ``mask_ignored`` keeps non-finite logits of ignored pixels out of the sums; the caller
    asks for it only when an unmasked pass came out non-finite, which is rare.
    """
    num, num_classes, num_pixels = logits.shape
    dtype, device = lam.dtype, logits.device
    chunk = max(1, _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_DEFAULT) // num_classes)
    inv_margin = 1.0 / cfg.margin if cfg.normalize else 1.0
    offset = 1.0 if cfg.normalize else cfg.margin  # h = d·inv_margin - offset, d = z_a - z
    lam_c, rho_c = lam[:, None], rho[:, None]
    fused_phr = cfg.penalty is phr
    if fused_phr:  # x = λ + ρh = (λ - ρ·offset) + (ρ·inv_margin)·d
        phr_const, phr_slope = lam_c - rho_c * offset, rho_c * inv_margin

    # Chunk workspaces, reused: fresh allocations would cost page faults on every chunk.
    distance_buf = torch.empty((num_classes, chunk), dtype=dtype, device=device)
    work_buf = torch.empty((num_classes, chunk), dtype=dtype, device=device)
    penalty_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
    weight_sum = torch.zeros((), dtype=torch.float64, device=device)
    grad = None
    if grad_scale is not None:
        grad = torch.empty((num, num_classes, num_pixels), dtype=dtype, device=device)
        neg_scale = (grad_scale * -inv_margin).to(dtype)  # dh_k/dz_k = -inv_margin, k != a
    stats = None
    if want_stats:
        stats = (torch.zeros(num_classes, dtype=torch.float64, device=device),
                 torch.zeros(num_classes, dtype=torch.float64, device=device),
                 torch.zeros((), dtype=torch.float64, device=device))

    for n in range(num):
        for start in range(0, num_pixels, chunk):
            stop = min(start + chunk, num_pixels)
            z = logits[n, :, start:stop]
            weight = pixel_weight[n, start:stop]
            # In the compute dtype: an fp16 difference could round or overflow.
            distance = torch.sub(z.amax(0).to(dtype), z, out=distance_buf[:, :stop - start])
            penalised = None
            if not cfg.penalise_ignored:
                penalised = target[n, start:stop] != cfg.ignore_index
                if mask_ignored:
                    distance.masked_fill_(~penalised, 1.0)
            work = work_buf[:, :stop - start]
            if fused_phr:
                value, derivative = None, torch.addcmul(phr_const, phr_slope, distance,
                                                        out=work).clamp_min_(0)
            else:
                h = torch.mul(distance, inv_margin, out=work).sub_(offset)
                value, derivative = cfg.penalty(h, lam_c, rho_c, value=want_loss)
            if want_stats:
                finite = torch.isfinite(distance.sum(0))
                counted = finite if penalised is None else finite & penalised
                clamped = derivative.clamp(cfg.lambda_min, cfg.lambda_max)
                stats[0].add_(torch.where(counted, clamped, 0).sum(1, dtype=torch.float64))
                distance_sum = torch.where(counted, distance, 0).sum(1, dtype=torch.float64)
                count = counted.sum()
                stats[1].add_(distance_sum * inv_margin - offset * count)
                stats[2].add_(count)
            if grad is not None:
                grad_chunk = torch.mul(derivative, weight * neg_scale,
                                       out=grad[n, :, start:stop])
                # The winner's term is constant (d_a = 0); dL/dz_a = Σ_{k≠a} g_k = -Σ_k
                # grad_k when every k, the winner included, first gets grad_k = -g_k.
                _add_to_winner(grad_chunk, grad_chunk.sum(0).neg_(), distance, z)
            if want_loss:
                if fused_phr:  # Σ w·P = (Σ w·x² - λ²·Σ w) / (2ρ) for P = (x² - λ²) / (2ρ)
                    penalty_sum += derivative.square_() @ weight
                    weight_sum += weight.sum(dtype=torch.float64)
                else:
                    penalty_sum += value @ weight
    if not want_loss:
        return None, grad, stats
    if fused_phr:
        lam64, rho64 = lam.to(torch.float64), rho.to(torch.float64)
        penalty_sum = (penalty_sum - lam64 * lam64 * weight_sum) / (2 * rho64)
    return penalty_sum, grad, stats


class _CALSPenalty(torch.autograd.Function):
    """Loss value in forward, closed-form gradient (cals.md §2) saved for backward."""

    @staticmethod
    def forward(ctx, logits: Tensor, cfg: _PassConfig, target: Tensor, pixel_weight: Tensor,
                lam: Tensor, rho: Tensor, scale: Tensor, stats_sink: list | None):
        want_grad = ctx.needs_input_grad[0]
        args = (cfg, logits, target, pixel_weight, lam, rho, scale if want_grad else None)
        want_stats = stats_sink is not None
        penalty_sum, grad, stats = _penalty_pass(*args, want_loss=True, want_stats=want_stats)
        total = penalty_sum.sum()
        if not cfg.penalise_ignored and not bool(torch.isfinite(total)):
            # Non-finite logits (fp16 overflow under AMP): only valid pixels may carry them
            # into the loss, as with cross-entropy; redo the pass keeping ignored ones out.
            penalty_sum, grad, stats = _penalty_pass(*args, want_loss=True,
                                                     want_stats=want_stats, mask_ignored=True)
            total = penalty_sum.sum()
        if want_stats:
            stats_sink.append(stats)
        ctx.input_dtype = logits.dtype
        if want_grad:
            ctx.save_for_backward(grad)
        return (total * scale).to(lam.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        if grad.dtype == ctx.input_dtype and grad.device.type == 'cpu' and bool(
                grad_output == 1):
            # The usual case without AMP (the loss is summed into the total): hand over the
            # saved gradient instead of a logits-sized copy (autograd never writes into it).
            grad_logits = grad
        else:
            grad_logits = torch.empty_like(grad, dtype=ctx.input_dtype)
            torch.mul(grad, grad_output.to(grad.dtype), out=grad_logits)
        return grad_logits, None, None, None, None, None, None, None


@MODELS.register_module()
class CALSLoss(nn.Module):
    """Class Adaptive Label Smoothing penalty (Liu et al., CVPR 2023; ``shared/docs/cals.md``).

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
        # float64 state: the multipliers are means over millions of pixels (cals.md §3).
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
        self._train_stats: tuple | None = None

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, margin={self.margin}, '
                f'normalize={self.normalize}, penalty={self.penalty!r}, '
                f'loss_weight={self.loss_weight}, penalise_ignored={self.penalise_ignored}')

    def _config(self, ignore_index: int) -> _PassConfig:
        return _PassConfig(PENALTIES[self.penalty], self.margin, self.normalize,
                           int(ignore_index), self.penalise_ignored, self.lambda_min,
                           self.lambda_max)

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
        """CALS penalty of cals.md §2.

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
        loss = _CALSPenalty.apply(
            pred.reshape(num, num_classes, -1), self._config(ignore_index), target,
            pixel_weight, self.lambda_.to(dtype), self.rho.to(dtype), scale, sink)
        if sink:
            self._add_train_statistics(sink[0])
        return loss

    @torch.no_grad()
    def constraint_statistics(self, logits: Tensor, labels: Tensor,
                              ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class sums for the multiplier update of cals.md §3, with the current λ and ρ.

        Args:
            logits (Tensor): (N, C, H, W) or (C, H, W).
            labels (Tensor): (N, H, W) or (H, W) / (1, H, W) for a single image.
            ignore_index (int): Label of pixels left out (unless ``penalise_ignored``).

        Returns:
            tuple: float64 ``(Σ clamp(P'(h_k), λ_min, λ_max), Σ h_k, pixel count)`` over the
            pixels the loss penalises whose logits are all finite; the first two have shape
            (C,), the count is a scalar.
        """
        if logits.dim() == 3:
            logits = logits[None]
            labels = labels[None] if labels.dim() == 2 else labels
        self._check_inputs(logits, labels)
        dtype = self._compute_dtype(logits)
        num, num_classes = logits.shape[:2]
        labels = labels.reshape(num, -1)
        _, _, stats = _penalty_pass(
            self._config(ignore_index), logits.reshape(num, num_classes, -1), labels,
            torch.ones_like(labels, dtype=dtype), self.lambda_.to(dtype), self.rho.to(dtype),
            None, want_loss=False, want_stats=True)
        return stats

    def _add_train_statistics(self, stats: tuple) -> None:
        if self._train_stats is None:
            self._train_stats = tuple(s.detach().clone() for s in stats)
        else:
            for total, part in zip(self._train_stats, stats):
                total.add_(part)

    def pop_train_statistics(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return and reset the statistics gathered by training forwards since the last call.

        Same layout as :meth:`constraint_statistics`; zeros if nothing was gathered.
        """
        stats = self._train_stats
        self._train_stats = None
        if stats is None:
            device = self.lambda_.device
            zeros = torch.zeros(self.num_classes, dtype=torch.float64, device=device)
            stats = (zeros, zeros.clone(), torch.zeros((), dtype=torch.float64, device=device))
        return stats

    @torch.no_grad()
    def update_multipliers(self, sum_derivative: Tensor, sum_constraint: Tensor,
                           count, class_names: Sequence[str] | None = None) -> bool:
        """Apply the multiplier and penalty-parameter update of cals.md §3.

        ``λ ← clamp(G, λ_min, λ_max)`` with ``G = sum_derivative / count``; every
        ``rho_interval`` updates ``ρ_k ← min(γρ_k, ρ_max)`` where
        ``H_k > τ · max(H_prev_k, 0)``, ``H = sum_constraint / count``; ``H_prev ← H``.
        The first update has no ``H_prev`` and never grows ρ.

        Args:
            sum_derivative (Tensor): (C,) sums of ``clamp(P', λ_min, λ_max)`` over the pixels.
            sum_constraint (Tensor): (C,) sums of ``h``.
            count (Tensor | int): Number of pixels summed (already reduced across ranks).
            class_names (Sequence[str], optional): For warnings.

        Returns:
            bool: False, leaving λ, ρ and ``H_prev`` unchanged with a warning, when there are
            no pixels or a statistic is not finite.
        """
        sum_derivative = torch.as_tensor(sum_derivative, dtype=torch.float64)
        sum_constraint = torch.as_tensor(sum_constraint, dtype=torch.float64)
        count = float(count)
        if sum_derivative.shape != (self.num_classes,) or sum_constraint.shape != (
                self.num_classes,):
            raise ValueError(f'update_multipliers expects ({self.num_classes},) sums, got '
                             f'{tuple(sum_derivative.shape)} and {tuple(sum_constraint.shape)}')
        if not count > 0:
            print_log(f'CALS: no pixels were gathered (count={count:g}); λ and ρ keep their '
                      'values', logger='current', level=logging.WARNING)
            return False
        mean_derivative = sum_derivative / count
        mean_constraint = sum_constraint / count
        bad = ~(torch.isfinite(mean_derivative) & torch.isfinite(mean_constraint))
        if bool(bad.any()):
            indices = bad.nonzero().flatten().tolist()
            names = [f'{class_names[i]!r} ({i})' if class_names else str(i) for i in indices]
            print_log(f'CALS: non-finite statistics for {len(indices)} of {self.num_classes} '
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
        self.lambda_.copy_(mean_derivative.clamp(self.lambda_min, self.lambda_max))
        self.prev_constraint.copy_(mean_constraint)
        self.num_updates.fill_(updates)
        return True
