"""The fast CALS pass: loss, closed-form gradient and statistics in one sweep over the logits.

The definition of the penalty is :func:`mmcals.losses.cals.cals_penalty` (plain autograd,
docs/method.md §1-§2); this module computes the same numbers faster and in less memory, and
the tests hold it to that definition. It walks over chunks of pixels so that its float32
temporaries stay small and in cache; only the gradient, one logits-sized tensor, outlives a
call. Computing in float32 also under AMP keeps fp16/bf16 logits from overflowing the cubic
``p2`` term.

Two entry points:

- :func:`loss_and_gradient`: per-class penalty sums and ``∂loss/∂logits`` (docs/method.md
  §2), and, when handed a :class:`ConstraintStats`, the statistics of §3/§5 of the same
  pixels from the same chunk temporaries (``CALSHook(source='train')``);
- :func:`constraint_statistics`: the statistics alone (validation outputs).

Three CPU-specific paths, each justified by ``benchmarks/bench_cals_loss.py``, are marked
``CPU path`` below: the winner read off the zeros of ``z_a - z`` (:func:`_add_to_winner`), the
fused PHR derivative (:func:`_derivative`) and the zero-copy backward
(:class:`mmcals.losses.cals._CALSFunction`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .constraint_stats import ConstraintStats
from .logit_gaps import GAP_BIN_WIDTH, GAP_NUM_BINS

# Pixels per chunk = elements // num_classes. On the CPU 4 MiB per float32 temporary keeps the
# elementwise steps of a chunk in cache while each step is still large enough for its threads
# (benchmarks/bench_cals_loss.py); accelerators want fewer, larger launches.
_CHUNK_ELEMENTS = {'cpu': 1 << 20}
_CHUNK_ELEMENTS_DEFAULT = 1 << 22
# CPU path: devices where the winner is read off the exact zeros of z_a - z (_add_to_winner).
_SIGN_WINNER_DEVICES = ('cpu',)


@dataclass(frozen=True)
class KernelConfig:
    """What a pass needs to know of its :class:`~mmcals.losses.CALSLoss`.

    Args:
        penalty (Callable): One of :data:`mmcals.losses.cals.PENALTIES`.
        margin (float): The margin ``m``.
        normalize (bool): ``h = (d - m) / m`` (True) or ``h = d - m``.
        ignore_index (int): Label of the pixels left out unless ``penalise_ignored``.
        penalise_ignored (bool): Penalise (and count) ignored pixels too.
        lambda_min (float): Lower clamp of ``P'`` in the statistics (and the λ floor).
        lambda_max (float): Upper clamp of ``P'`` in the statistics.
        fused_phr (bool): Whether ``penalty`` is PHR, computed by the fused CPU path.
    """

    penalty: Callable
    margin: float
    normalize: bool
    ignore_index: int
    penalise_ignored: bool
    lambda_min: float
    lambda_max: float
    fused_phr: bool

    @property
    def inv_margin(self) -> float:
        """``dh/dd``: ``h = d · inv_margin - offset``."""
        return 1.0 / self.margin if self.normalize else 1.0

    @property
    def offset(self) -> float:
        return 1.0 if self.normalize else self.margin


@dataclass
class _Chunk:
    """One chunk of pixels of one image; ``distance`` lives in a buffer reused by the next."""

    n: int
    start: int
    stop: int
    logits: Tensor  # (C, P) view of the input
    top: Tensor  # (P,) z_a, in the compute dtype
    distance: Tensor  # (C, P) d = z_a - z, in the compute dtype
    penalised: Tensor | None  # (P,) bool, None when every pixel is penalised


def _chunks(cfg: KernelConfig, logits: Tensor, target: Tensor, dtype: torch.dtype,
            mask_ignored: bool) -> Iterator[_Chunk]:
    """The chunks of ``logits`` (N, C, P) with their gaps ``d`` (docs/method.md §1).

    ``mask_ignored`` sets the gaps of ignored pixels to 1, keeping their non-finite logits out
    of every sum; callers ask for it only when an unmasked pass came out non-finite (rare).
    """
    num, num_classes, num_pixels = logits.shape
    chunk = _chunk_pixels(logits)
    # Reused: fresh allocations would cost page faults on every chunk.
    distance_buf = torch.empty((num_classes, chunk), dtype=dtype, device=logits.device)
    for n in range(num):
        for start in range(0, num_pixels, chunk):
            stop = min(start + chunk, num_pixels)
            z = logits[n, :, start:stop]
            # In the compute dtype: an fp16 difference could round or overflow.
            top = z.amax(0).to(dtype)
            distance = torch.sub(top, z, out=distance_buf[:, :stop - start])
            penalised = None
            if not cfg.penalise_ignored:
                penalised = target[n, start:stop] != cfg.ignore_index
                if mask_ignored:
                    distance.masked_fill_(~penalised, 1.0)
            yield _Chunk(n, start, stop, z, top, distance, penalised)


def _derivative(cfg: KernelConfig, distance: Tensor, lam: Tensor, rho: Tensor, out: Tensor,
                want_value: bool) -> tuple[Tensor | None, Tensor]:
    """``(P or None, P')`` of every gap of a chunk; ``lam``, ``rho`` are (C, 1).

    CPU path: for PHR, ``P' = max(λ + ρh, 0)`` is one fused ``addcmul`` of ``d`` into ``out``
    (``x = (λ - ρ·offset) + (ρ·inv_margin)·d``), and the caller recovers ``Σ w·P`` from
    ``Σ w·x²`` (:func:`loss_and_gradient`), saving the separate ``h``, ``P`` and ``P'``
    steps of the generic path: the generic path takes 1.64x the time of the whole CALS
    forward+backward (benchmarks/bench_cals_loss.py, "CPU paths": 0.62 s against 0.38 s on
    2x19x512x1024 float32 logits, one thread). ``value`` is then None.
    """
    if cfg.fused_phr:
        const, slope = lam - rho * cfg.offset, rho * cfg.inv_margin
        return None, torch.addcmul(const, slope, distance, out=out).clamp_min_(0)
    h = torch.mul(distance, cfg.inv_margin, out=out).sub_(cfg.offset)
    return cfg.penalty(h, lam, rho, value=want_value)


def _add_to_winner(grad: Tensor, amount: Tensor, distance: Tensor, logits: Tensor) -> None:
    """``grad[a] += amount`` at each pixel's winner ``a``, the first maximum as torch.max picks.

    CPU path: torch's index-returning reductions are slow on the CPU (with ``max(0).indices``
    the CALS forward+backward takes 1.76x the time, 0.66 s against 0.38 s in
    benchmarks/bench_cals_loss.py, "CPU paths"), so the winner is read off ``distance = z_a - z``,
    which is exactly 0 at the maxima: ``1 - sign(distance)`` is the one-hot winner unless a
    pixel has tied maxima; chunks with ties take torch.max's index. ``distance`` is
    overwritten.
    """
    if logits.device.type in _SIGN_WINNER_DEVICES:
        not_winner = distance.sign_()
        ties = not_winner.sum(0) < distance.shape[0] - 1
        if not bool(ties.any()):
            grad.addcmul_(not_winner.sub_(1), amount, value=-1)
            return
    grad.scatter_add_(0, logits.max(0).indices[None], amount[None])


class _StatisticsWorkspace:
    """Buffers and per-pass constants for :func:`_add_statistics`."""

    def __init__(self, cfg: KernelConfig, num_classes: int, chunk: int, lam: Tensor,
                 rho: Tensor, dtype: torch.dtype, device: torch.device):
        self.scratch = torch.empty((num_classes, chunk), dtype=dtype, device=device)
        self.bins = torch.empty((num_classes, chunk), dtype=torch.int16, device=device)
        # The winner's own gap is 0: whether its P' exceeds λ_min is one bool per class,
        # computed with the same arithmetic as every other gap.
        zero = torch.zeros((num_classes, 1), dtype=dtype, device=device)
        _, derivative = _derivative(cfg, zero, lam, rho, torch.empty_like(zero), False)
        self.winner_acts = (derivative[:, 0] > cfg.lambda_min).to(torch.float64)


def _add_statistics(stats: ConstraintStats, cfg: KernelConfig, chunk: _Chunk,
                    derivative: Tensor, ws: _StatisticsWorkspace) -> None:
    """Add one chunk's :class:`ConstraintStats` (docs/method.md §3, §5) to ``stats``.

    Must run before :func:`_add_to_winner` overwrites ``chunk.distance``. Sums over pixels
    are products with the 0/1 vector of counted pixels (BLAS, much cheaper than masked
    float64 reductions), exact for the counts and float32-rounded per chunk for the sums of
    ``P'`` and ``d`` under float32 logits; chunk results are added in float64.
    """
    distance, z = chunk.distance, chunk.logits
    num_pixels = distance.shape[1]
    counted = (chunk.penalised if chunk.penalised is not None else
               torch.ones(num_pixels, dtype=torch.bool, device=distance.device))
    weight = counted.to(distance.dtype)
    sum_distance = distance @ weight
    # A non-finite logit makes its pixel's gaps inf/NaN, hence (inf·0 = NaN for uncounted
    # pixels) this sum or the winner's logit non-finite. Only then are pixels masked one by one.
    if not bool(torch.isfinite(sum_distance).all()) or not bool(
            torch.isfinite(chunk.top).all()):
        counted = counted & torch.isfinite(distance.sum(0))
        weight = counted.to(distance.dtype)
        distance = torch.where(counted, distance, 0)
        derivative = torch.where(counted, derivative, 0)
        sum_distance = distance @ weight
    scratch, bins = ws.scratch[:, :num_pixels], ws.bins[:, :num_pixels]
    count = weight.sum(dtype=torch.float64)
    f64 = torch.float64

    def counted_sum(values: Tensor) -> Tensor:
        return (values @ weight).to(f64)

    stats.count += count
    stats.sum_derivative += counted_sum(
        torch.clamp(derivative, cfg.lambda_min, cfg.lambda_max, out=scratch))
    stats.sum_constraint += sum_distance.to(f64) * cfg.inv_margin - cfg.offset * count
    # Pairs exclude each pixel's winner (first maximum); with no tie it is the class at d = 0.
    winners = counted_sum(torch.eq(distance, 0, out=scratch))
    if float(winners.sum()) != float(count):
        winners = torch.bincount(z.max(0).indices[counted], minlength=z.shape[0]).to(f64)
    stats.violating += counted_sum(torch.gt(distance, cfg.margin, out=scratch))
    stats.acting += (counted_sum(torch.gt(derivative, cfg.lambda_min, out=scratch))
                     - winners * ws.winner_acts)
    # The gap histogram, equal to logit_gaps.gap_histogram: 4·d is exact, so truncating it
    # to int16 is floor(d / GAP_BIN_WIDTH); uncounted pixels go to an extra bin, dropped.
    scaled = torch.mul(distance, 1.0 / GAP_BIN_WIDTH, out=scratch).clamp_max_(GAP_NUM_BINS - 1)
    if not bool(counted.all()):
        scaled.masked_fill_(~counted, GAP_NUM_BINS)
    bins.copy_(scaled)
    # One bincount per class keeps its counters in L1 (twice as fast as one over all classes).
    counts = torch.stack([torch.bincount(row, minlength=GAP_NUM_BINS + 1) for row in bins])
    stats.gap_histogram += counts[:, :GAP_NUM_BINS]
    stats.gap_histogram[:, 0] -= winners


def _chunk_pixels(logits: Tensor) -> int:
    num_classes, num_pixels = logits.shape[1:]
    size = _CHUNK_ELEMENTS.get(logits.device.type, _CHUNK_ELEMENTS_DEFAULT)
    return min(max(1, size // num_classes), num_pixels)


def loss_and_gradient(cfg: KernelConfig, logits: Tensor, target: Tensor, pixel_weight: Tensor,
                      lam: Tensor, rho: Tensor, grad_scale: Tensor | None,
                      stats: ConstraintStats | None = None, mask_ignored: bool = False
                      ) -> tuple[Tensor, Tensor | None]:
    """Per-class penalty sums and their gradient (docs/method.md §2), in one pass.

    Args:
        cfg (KernelConfig): The loss's settings.
        logits (Tensor): (N, C, P) logits, any floating dtype.
        target (Tensor): (N, P) labels.
        pixel_weight (Tensor): (N, P) weight of each pixel's term, 0 for ignored pixels.
        lam (Tensor): (C,) λ in the compute dtype (float32, or float64 for float64 logits).
        rho (Tensor): (C,) ρ in the compute dtype.
        grad_scale (Tensor, optional): Scale of the loss; None computes no gradient.
        stats (ConstraintStats, optional): Statistics to add this pass's to.
        mask_ignored (bool): See :func:`_chunks`. Default: False.

    Returns:
        tuple: ``(penalty_sum, grad)``: (C,) float64 ``Σ_pixels pixel_weight · P(h_k)``, and
        ``∂(grad_scale · Σ pixel_weight · P) / ∂logits`` (N, C, P) in the compute dtype, or
        None: ``-g_k`` for the non-winners, ``Σ_{k≠a} g_k`` for the winner.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        num, num_classes, num_pixels = logits.shape
        dtype, device = lam.dtype, logits.device
        chunk = _chunk_pixels(logits)
        lam_c, rho_c = lam[:, None], rho[:, None]
        work_buf = torch.empty((num_classes, chunk), dtype=dtype, device=device)
        penalty_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        grad = neg_scale = None
        if grad_scale is not None:
            grad = torch.empty((num, num_classes, num_pixels), dtype=dtype, device=device)
            neg_scale = (grad_scale * -cfg.inv_margin).to(dtype)  # dh_k/dz_k, k != a
        ws = (None if stats is None else
              _StatisticsWorkspace(cfg, num_classes, chunk, lam_c, rho_c, dtype, device))
        for part in _chunks(cfg, logits, target, dtype, mask_ignored):
            weight = pixel_weight[part.n, part.start:part.stop]
            work = work_buf[:, :part.stop - part.start]
            value, derivative = _derivative(cfg, part.distance, lam_c, rho_c, work, True)
            if stats is not None:
                _add_statistics(stats, cfg, part, derivative, ws)
            if grad is not None:
                grad_chunk = torch.mul(derivative, weight * neg_scale,
                                       out=grad[part.n, :, part.start:part.stop])
                # The winner's term is constant (d_a = 0); dL/dz_a = Σ_{k≠a} g_k = -Σ_k
                # grad_k when every k, the winner included, first gets grad_k = -g_k.
                _add_to_winner(grad_chunk, grad_chunk.sum(0).neg_(), part.distance,
                               part.logits)
            if cfg.fused_phr:  # Σ w·P = (Σ w·x² - λ²·Σ w) / (2ρ) for P = (x² - λ²) / (2ρ)
                penalty_sum += derivative.square_() @ weight
                weight_sum += weight.sum(dtype=torch.float64)
            else:
                penalty_sum += value @ weight
        if cfg.fused_phr:
            lam64, rho64 = lam.to(torch.float64), rho.to(torch.float64)
            penalty_sum = (penalty_sum - lam64 * lam64 * weight_sum) / (2 * rho64)
        return penalty_sum, grad


def constraint_statistics(cfg: KernelConfig, logits: Tensor, target: Tensor, lam: Tensor,
                          rho: Tensor) -> ConstraintStats:
    """The :class:`ConstraintStats` of ``logits`` (N, C, P) with labels ``target`` (N, P).

    ``lam`` and ``rho`` are (C,) in the compute dtype, as for :func:`loss_and_gradient`.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        num_classes = logits.shape[1]
        dtype, device = lam.dtype, logits.device
        chunk = _chunk_pixels(logits)
        lam_c, rho_c = lam[:, None], rho[:, None]
        work_buf = torch.empty((num_classes, chunk), dtype=dtype, device=device)
        stats = ConstraintStats.zeros(num_classes, device)
        ws = _StatisticsWorkspace(cfg, num_classes, chunk, lam_c, rho_c, dtype, device)
        for part in _chunks(cfg, logits, target, dtype, mask_ignored=False):
            work = work_buf[:, :part.stop - part.start]
            _, derivative = _derivative(cfg, part.distance, lam_c, rho_c, work, False)
            _add_statistics(stats, cfg, part, derivative, ws)
        return stats
