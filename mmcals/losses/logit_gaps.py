"""Logit gaps ``d_k = z_a - z_k`` and their fixed-bin histogram (docs/method.md §1, §5).

CALS acts on a (pixel, class) pair only once the gap between the winner's logit and the
class's logit nears the margin ``m``. How the gaps of a model are distributed therefore says
whether a margin will constrain anything; :class:`~mmcals.hooks.CALSHook` logs it at every
multiplier update and ``tools/analysis/logit_gaps.py`` measures it for a trained model.

The histogram has fixed bins so that sums over images, iterations and ranks are exact: every
bin holds a count (float64 holds integers exactly up to 2**53). Only the pairs ``k != a`` are
counted; the winner's own gap is 0 by definition and says nothing. Bins are
``[i·w, (i+1)·w)`` for ``i < GAP_NUM_BINS - 1`` with ``w = GAP_BIN_WIDTH``; the last bin also
holds every gap beyond ``GAP_RANGE`` (quantiles that fall into it are reported as its lower
edge, i.e. saturate at ``GAP_RANGE - w``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

GAP_BIN_WIDTH = 0.25
GAP_NUM_BINS = 512
GAP_RANGE = GAP_BIN_WIDTH * GAP_NUM_BINS  # 128: converged segmentation nets stay far below


def gap_bin_edges() -> Tensor:
    """The ``GAP_NUM_BINS + 1`` bin edges, float64 (the last bin is open to the right)."""
    return torch.arange(GAP_NUM_BINS + 1, dtype=torch.float64) * GAP_BIN_WIDTH


def gap_histogram(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-class histogram of ``d_k = max_j z_j - z_k`` over the valid pixels, ``k != a``.

    Args:
        logits (Tensor): (N, C, ...) logits, any floating dtype (gaps are taken in float32
            or wider, so fp16 logits do not round them).
        valid (Tensor, optional): Boolean mask (N, ...) of the pixels to count; None counts
            every pixel. Pixels with a non-finite logit are never counted.

    Returns:
        Tensor: (C, GAP_NUM_BINS) float64 counts; ``hist[k].sum()`` is the number of counted
        pixels whose winner is not ``k``.
    """
    if logits.dim() < 2:
        raise ValueError(f'gap_histogram expects logits (N, C, ...), got shape '
                         f'{tuple(logits.shape)}')
    num_classes = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, num_classes)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    keep = torch.isfinite(z).all(1)
    if valid is not None:
        if valid.numel() != z.shape[0]:
            raise ValueError(f'gap_histogram: valid has {valid.numel()} entries for '
                             f'{z.shape[0]} pixels; give one per pixel')
        keep &= valid.reshape(-1).to(z.device, torch.bool)
    z = z[keep]
    hist = torch.zeros(num_classes, GAP_NUM_BINS, dtype=torch.float64, device=z.device)
    if z.shape[0] == 0:
        return hist
    top, winner = z.max(1)
    index = ((top[:, None] - z) / GAP_BIN_WIDTH).floor_().clamp_(0, GAP_NUM_BINS - 1).long()
    index += torch.arange(num_classes, device=z.device) * GAP_NUM_BINS
    hist.view(-1).add_(torch.bincount(index.view(-1), minlength=hist.numel()).double())
    # The winner's own gap (0, in bin 0) is not a pair: take it out again.
    hist[:, 0] -= torch.bincount(winner, minlength=num_classes).double()
    return hist


def gap_quantiles(hist: Tensor, quantiles: Sequence[float]) -> Tensor:
    """Quantiles of the gaps from a histogram, exact to within one bin.

    Args:
        hist (Tensor): (..., GAP_NUM_BINS) counts, e.g. one row per class, or their sum over
            classes for all pairs.
        quantiles (Sequence[float]): Values in [0, 1].

    Returns:
        Tensor: (..., len(quantiles)) float64 gaps, interpolated linearly inside the bin that
        holds each quantile; NaN where the histogram is empty.
    """
    q = torch.as_tensor(quantiles, dtype=torch.float64)
    if q.dim() != 1 or bool(((q < 0) | (q > 1)).any()):
        raise ValueError(f'quantiles must be a list of values in [0, 1], got {list(quantiles)}')
    hist = hist.to(torch.float64).cpu()
    total = hist.sum(-1, keepdim=True)
    cum = hist.cumsum(-1)
    target = q * total  # (..., Q)
    # First bin whose cumulative count reaches the target (a 0 target sits in the first
    # non-empty bin, at its lower edge).
    index = torch.searchsorted(cum.contiguous(), target.contiguous().clamp_min(1e-12))
    index = index.clamp_(max=GAP_NUM_BINS - 1)
    before = torch.where(index > 0, cum.gather(-1, (index - 1).clamp_min(0)),
                         torch.zeros_like(target))
    inside = hist.gather(-1, index)
    fraction = torch.where(inside > 0, (target - before) / inside.clamp_min(1e-300),
                           torch.zeros_like(target)).clamp_(0, 1)
    last = index == GAP_NUM_BINS - 1  # open bin: no upper edge to interpolate towards
    fraction = torch.where(last, torch.zeros_like(fraction), fraction)
    values = (index.double() + fraction) * GAP_BIN_WIDTH
    return torch.where(total > 0, values, torch.full_like(values, float('nan')))


def share_above(hist: Tensor, threshold: float) -> Tensor:
    """Share of the counted pairs whose gap exceeds ``threshold``, to within one bin.

    The bin that holds ``threshold`` is split in proportion (the inverse of
    :func:`gap_quantiles`). Returns (...,) float64; NaN where the histogram is empty.
    """
    hist = hist.to(torch.float64).cpu()
    edges = gap_bin_edges()
    lower, upper = edges[:-1], edges[1:].clone()
    upper[-1] = float('inf')
    width = (upper - lower).clamp_max(GAP_BIN_WIDTH)
    above = ((upper - threshold) / width).clamp(0, 1)
    above[-1] = 1.0 if threshold < lower[-1] else 0.0
    total = hist.sum(-1)
    share = (hist * above).sum(-1) / total.clamp_min(1)
    return torch.where(total > 0, share, torch.full_like(share, float('nan')))


def margin_for_share(hist: Tensor, share: float) -> Tensor:
    """The margin at which ``share`` of the counted pairs would violate it (gap > margin)."""
    if not 0 <= share <= 1:
        raise ValueError(f'share={share!r} must lie in [0, 1]')
    return gap_quantiles(hist, [1 - share])[..., 0]
