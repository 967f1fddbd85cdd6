"""Explicit confidence penalty (ECP)."""
from __future__ import annotations

from collections.abc import Sequence

from mmseg.registry import MODELS
from torch import Tensor

from .utils import PixelLoss, log_probs


@MODELS.register_module()
class ConfidencePenaltyLoss(PixelLoss):
    """Explicit confidence penalty (ECP), a calibration baseline of CALS.

    For a pixel with ``p = softmax(z)`` and label ``y``:

        L = -log p_y - β · H(p),    H(p) = -Σ_k p_k log p_k

    Rewarding entropy pushes against over-confident predictions. The CE term is included:
    use this loss *instead of* ``CrossEntropyLoss``. The loss can be negative. Masking, class
    weights (which scale the whole pixel loss by ``w_y``) and reduction follow mmseg's
    ``CrossEntropyLoss`` (:mod:`mmcals.losses.utils`).

    Reference: Pereyra, Tucker, Chorowski, Kaiser, Hinton, "Regularizing Neural Networks by
    Penalizing Confident Output Distributions", ICLR 2017 workshop.

    Args:
        beta (float): Weight ``β >= 0`` of the entropy reward. Defaults to 0.1.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        class_weight (list[float] | str, optional): Per-class weights or a file holding them.
            Defaults to None.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): Average over non-ignored pixels only. Defaults to False.
        loss_name (str): Name of the loss item. Defaults to ``'loss_ecp'``.
    """

    def __init__(self,
                 beta: float = 0.1,
                 reduction: str = 'mean',
                 class_weight: Sequence[float] | str | None = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_ecp'):
        super().__init__(reduction, class_weight, loss_weight, avg_non_ignore, loss_name)
        if beta < 0:
            raise ValueError(f'beta={beta} must be >= 0')
        self.beta = beta

    def pixel_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        logp = log_probs(pred)
        nll = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
        entropy = -(logp.exp() * logp).sum(dim=1)
        return nll - self.beta * entropy

    def extra_repr(self) -> str:
        return f'beta={self.beta}, {super().extra_repr()}'
