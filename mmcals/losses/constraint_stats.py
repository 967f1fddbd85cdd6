"""The per-class statistics of the CALS constraint (docs/method.md §3 and §5) as one type.

:class:`ConstraintStats` holds sums over pixels, never means, so that parts computed on
different chunks, images, iterations or ranks add up exactly to the statistics of their union:
``a + b`` for two parts, ``all_reduce(s.flatten())`` across ranks, then ``means()`` or
``diagnostics()`` once, where the multipliers are updated.

Every field is float64. The counts (pixels, pairs, histogram bins) are integers, which float64
holds exactly up to 2**53, so their sums do not depend on the order of summation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .logit_gaps import GAP_NUM_BINS, gap_quantiles, margin_for_share

#: Gap quantiles reported by :meth:`ConstraintStats.diagnostics`, as ``gap_p50``...
GAP_PERCENTILES = (50, 90, 99)


@dataclass
class ConstraintStats:
    """Sums over the counted pixels of one CALSLoss, per class ``k`` (docs/method.md §3, §5).

    A counted pixel is one the loss penalises whose logits are all finite. A pair is a
    counted pixel and a class ``k`` other than its winner ``a`` (the first maximum).

    Attributes:
        sum_derivative (Tensor): (C,) ``Σ clamp(P'(h_k), λ_min, λ_max)`` over counted pixels.
        sum_constraint (Tensor): (C,) ``Σ h_k`` over counted pixels.
        count (Tensor): () number of counted pixels.
        violating (Tensor): (C,) number of pairs with ``h_k > 0`` (the gap exceeds the margin).
        acting (Tensor): (C,) number of pairs with ``P'(h_k) > λ_min``: CALS pushes these
            logits beyond what the λ floor alone would.
        gap_histogram (Tensor): (C, GAP_NUM_BINS) histogram of the gaps ``d_k = z_a - z_k`` of
            the pairs, in the fixed bins of :mod:`mmcals.losses.logit_gaps`; a row sums to the
            number of pairs of that class.
    """

    sum_derivative: Tensor
    sum_constraint: Tensor
    count: Tensor
    violating: Tensor
    acting: Tensor
    gap_histogram: Tensor

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str | None = None
              ) -> ConstraintStats:
        """Statistics of no pixel, to add parts to."""
        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return cls(zeros(num_classes), zeros(num_classes), zeros(), zeros(num_classes),
                   zeros(num_classes), zeros(num_classes, GAP_NUM_BINS))

    @property
    def num_classes(self) -> int:
        return self.sum_derivative.shape[0]

    @property
    def pairs(self) -> Tensor:
        """(C,) number of pairs per class: counted pixels whose winner is not the class."""
        return self.gap_histogram.sum(-1)

    def __add__(self, other: ConstraintStats) -> ConstraintStats:
        if not isinstance(other, ConstraintStats):
            return NotImplemented
        if other.num_classes != self.num_classes:
            raise ValueError(f'cannot add statistics of {other.num_classes} classes to '
                             f'statistics of {self.num_classes}')
        return ConstraintStats(*(getattr(self, f.name) + getattr(other, f.name)
                                 for f in fields(self)))

    def to(self, device: torch.device | str) -> ConstraintStats:
        return ConstraintStats(*(getattr(self, f.name).to(device) for f in fields(self)))

    def flatten(self) -> Tensor:
        """All fields in one 1-D float64 tensor (for ``all_reduce`` and checkpoints)."""
        return torch.cat([getattr(self, f.name).reshape(-1).to(torch.float64)
                          for f in fields(self)])

    @staticmethod
    def flat_size(num_classes: int) -> int:
        return 4 * num_classes + 1 + num_classes * GAP_NUM_BINS

    @classmethod
    def unflatten(cls, flat: Tensor, num_classes: int) -> ConstraintStats:
        """The inverse of :meth:`flatten`."""
        size = cls.flat_size(num_classes)
        if flat.dim() != 1 or flat.numel() != size:
            raise ValueError(f'flattened statistics of {num_classes} classes have {size} '
                             f'values, got a tensor of shape {tuple(flat.shape)}')
        c = num_classes
        parts = flat.to(torch.float64).split([c, c, 1, c, c, c * GAP_NUM_BINS])
        return cls(parts[0], parts[1], parts[2].reshape(()), parts[3], parts[4],
                   parts[5].reshape(c, GAP_NUM_BINS))

    def means(self) -> tuple[Tensor, Tensor]:
        """``(G, H)`` of docs/method.md §3: the mean clamped derivative and the mean ``h``."""
        count = self.count.clamp_min(1)
        return self.sum_derivative / count, self.sum_constraint / count

    def diagnostics(self) -> dict:
        """The constraint diagnostics of docs/method.md §5, as plain floats (NaN: no pair).

        Returns:
            dict: per class (lists of C floats) ``violating_share``, ``acting_share``,
            ``mean_h``, ``gap_p50``, ``gap_p90``, ``gap_p99``; and ``all``, the same shares
            and percentiles pooled over every class's pairs, with ``margin_1pct`` and
            ``margin_10pct``, the margins that 1% and 10% of the pairs would violate.
        """
        pairs = self.pairs
        nan = torch.full_like(pairs, float('nan'))
        per_class = {
            'violating_share': torch.where(pairs > 0, self.violating / pairs.clamp_min(1), nan),
            'acting_share': torch.where(pairs > 0, self.acting / pairs.clamp_min(1), nan),
            'mean_h': torch.where(self.count > 0, self.means()[1], nan),
        }
        quantiles = [p / 100 for p in GAP_PERCENTILES]
        per_class_q = gap_quantiles(self.gap_histogram, quantiles)
        for i, p in enumerate(GAP_PERCENTILES):
            per_class[f'gap_p{p}'] = per_class_q[:, i]
        result = {key: [float(v) for v in value.tolist()] for key, value in per_class.items()}

        pooled = self.gap_histogram.sum(0)
        total = float(pairs.sum())

        def share(count: Tensor) -> float:
            return float(count.sum()) / total if total > 0 else math.nan

        pooled_q = gap_quantiles(pooled, quantiles)
        result['all'] = {
            'violating_share': share(self.violating),
            'acting_share': share(self.acting),
            **{f'gap_p{p}': float(pooled_q[i]) for i, p in enumerate(GAP_PERCENTILES)},
            'margin_1pct': float(margin_for_share(pooled, 0.01)),
            'margin_10pct': float(margin_for_share(pooled, 0.10)),
        }
        return result
