"""Cross-entropy against uniformly smoothed targets (label smoothing)."""
from __future__ import annotations

from collections.abc import Sequence

from mmseg.registry import MODELS
from torch import Tensor

from .utils import PixelLoss, log_probs


@MODELS.register_module()
class LabelSmoothingLoss(PixelLoss):
    """Label smoothing (LS), a baseline of CALS (Liu et al., CVPR 2023).

    For a pixel with logits ``z``, ``p = softmax(z)`` and label ``y``, the targets are
    ``q_k = (1 - ε) [k = y] + ε / C`` and the loss is

        L = -Σ_k q_k log p_k = (1 - ε) (-log p_y) + ε · mean_k (-log p_k)

    Without class weights this equals ``torch.nn.functional.cross_entropy(...,
    label_smoothing=ε)``. Class weights scale the whole pixel loss by ``w_y`` (mmseg's
    convention; torch instead weights each smoothed target by its own class weight). Masking
    and reduction follow mmseg's ``CrossEntropyLoss`` (see :mod:`mmcals.losses.utils`).

    References: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
    CVPR 2016; Müller et al., "When Does Label Smoothing Help?", NeurIPS 2019.

    Args:
        epsilon (float): Smoothing ε in [0, 1]. Defaults to 0.05.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        class_weight (list[float] | str, optional): Per-class weights or a file holding them.
            Defaults to None.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): Average over non-ignored pixels only. Defaults to False.
        loss_name (str): Name of the loss item. Defaults to ``'loss_ls'``.
    """

    def __init__(self,
                 epsilon: float = 0.05,
                 reduction: str = 'mean',
                 class_weight: Sequence[float] | str | None = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_ls'):
        super().__init__(reduction, class_weight, loss_weight, avg_non_ignore, loss_name)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f'epsilon={epsilon} must lie in [0, 1]')
        self.epsilon = epsilon

    def pixel_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        logp = log_probs(pred)
        nll = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
        return (1.0 - self.epsilon) * nll - self.epsilon * logp.mean(dim=1)

    def extra_repr(self) -> str:
        return f'epsilon={self.epsilon}, {super().extra_repr()}'
