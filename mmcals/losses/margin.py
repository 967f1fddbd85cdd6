"""Margin-based label smoothing (MbLS)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmseg.registry import MODELS
from torch import Tensor

from .utils import PixelLoss, log_probs


@MODELS.register_module()
class MarginLoss(PixelLoss):
    """Margin-based label smoothing (MbLS), the closest baseline of CALS (docs/method.md §1).

    For a pixel with logits ``z ∈ R^C`` and label ``y``, with logit distances
    ``d_k = max_j z_j - z_k``:

        L = -log softmax(z)_y + α · (1 / C) Σ_k relu(d_k - m)

    i.e. cross-entropy plus the mean over classes of the margin violation; the reduction over
    pixels (mean over valid pixels with ``avg_non_ignore=True``) then gives
    "CE + α · mean over valid pixels and classes of relu(d - m)". The CE term is included:
    use this loss *instead of* ``CrossEntropyLoss``. CALS replaces the single α by one learned
    multiplier per class. Masking, class weights (which scale the whole pixel loss by
    ``w_y``) and reduction follow mmseg's ``CrossEntropyLoss`` (:mod:`mmcals.losses.utils`).

    Reference: Liu, Ben Ayed, Galdran, Dolz, "The Devil is in the Margin: Margin-based Label
    Smoothing for Network Calibration", CVPR 2022.

    Args:
        margin (float): Tolerated logit distance ``m >= 0``. Defaults to 10.
        alpha (float): Weight ``α >= 0`` of the margin penalty. Defaults to 0.1.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        class_weight (list[float] | str, optional): Per-class weights or a file holding them.
            Defaults to None.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): Average over non-ignored pixels only. Defaults to False.
        loss_name (str): Name of the loss item. Defaults to ``'loss_mbls'``.
    """

    def __init__(self,
                 margin: float = 10.0,
                 alpha: float = 0.1,
                 reduction: str = 'mean',
                 class_weight: Sequence[float] | str | None = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_mbls'):
        super().__init__(reduction, class_weight, loss_weight, avg_non_ignore, loss_name)
        if margin < 0:
            raise ValueError(f'margin={margin} must be >= 0')
        if alpha < 0:
            raise ValueError(f'alpha={alpha} must be >= 0')
        self.margin = margin
        self.alpha = alpha

    def pixel_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        logp = log_probs(pred)
        nll = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
        logits = pred.to(logp.dtype)
        distance = logits.max(dim=1, keepdim=True).values - logits
        penalty = torch.relu(distance - self.margin).mean(dim=1)
        return nll + self.alpha * penalty

    def extra_repr(self) -> str:
        return f'margin={self.margin}, alpha={self.alpha}, {super().extra_repr()}'
