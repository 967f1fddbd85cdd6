"""Softmax focal loss."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmseg.registry import MODELS
from torch import Tensor

from .utils import PixelLoss, log_probs


@MODELS.register_module()
class SoftmaxFocalLoss(PixelLoss):
    """Softmax focal loss (FL), a calibration baseline of CALS.

    For a pixel with ``p = softmax(z)`` and label ``y``:

        L = -(1 - p_y)^γ log p_y

    ``γ = 0`` is cross-entropy. mmseg's own ``FocalLoss`` is the sigmoid (one-vs-rest) form
    and needs mmcv's compiled ops; this one is pure torch, and is registered as
    ``SoftmaxFocalLoss`` because mmseg already registers the name ``FocalLoss``. Masking,
    class weights (which scale the whole pixel loss by ``w_y``) and reduction follow mmseg's
    ``CrossEntropyLoss`` (:mod:`mmcals.losses.utils`).

    References: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017; Mukhoti et
    al., "Calibrating Deep Neural Networks using Focal Loss", NeurIPS 2020 (γ = 3).

    Args:
        gamma (float): Focusing parameter ``γ >= 0``. Defaults to 3.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        class_weight (list[float] | str, optional): Per-class weights or a file holding them.
            Defaults to None.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): Average over non-ignored pixels only. Defaults to False.
        loss_name (str): Name of the loss item. Defaults to ``'loss_focal'``.
    """

    def __init__(self,
                 gamma: float = 3.0,
                 reduction: str = 'mean',
                 class_weight: Sequence[float] | str | None = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_focal'):
        super().__init__(reduction, class_weight, loss_weight, avg_non_ignore, loss_name)
        if gamma < 0:
            raise ValueError(f'gamma={gamma} must be >= 0')
        self.gamma = gamma

    def pixel_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        logp_y = log_probs(pred).gather(1, label.unsqueeze(1)).squeeze(1)
        # 1 - p_y as -expm1(log p_y): exact for confident pixels, where 1 - exp() cancels.
        # Kept above 0 so that (1 - p_y)^γ with γ < 1 has a finite gradient at p_y = 1.
        one_minus_p = (-logp_y.expm1()).clamp_min(torch.finfo(logp_y.dtype).tiny)
        return -one_minus_p.pow(self.gamma) * logp_y

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}, {super().extra_repr()}'
