"""Masking and reduction shared by the baseline calibration losses.

The baselines (label smoothing, MbLS, focal, confidence penalty) are drop-in replacements for
mmseg's ``CrossEntropyLoss`` in ``loss_decode``, so they reduce a per-pixel loss exactly the
way mmseg's softmax cross-entropy does (``mmseg/models/losses/cross_entropy_loss.py``):

- ignored pixels (label ``ignore_index``) contribute 0;
- ``class_weight[y]`` scales the whole loss of a pixel labelled ``y``;
- ``reduction='mean'`` divides the sum by, in this order: ``avg_factor`` when given; the sum
  of the valid pixels' class weights when ``class_weight`` is set; the number of valid pixels
  when ``avg_non_ignore=True``; otherwise the number of *all* pixels, ignored ones included
  (mmseg's default, kept so that a baseline and its CE twin are scaled alike);
- ``weight`` (per-pixel, e.g. from a pixel sampler) multiplies the loss and does not change
  the denominator.

One deliberate difference: mmseg 1.2.2 indexes ``class_weight`` with the raw labels and
raises ``IndexError`` as soon as a batch holds an ignored pixel (open-mmlab/mmsegmentation
issue #3734). Here ignored pixels get weight 0, which is what mmseg computes on every batch
it does not crash on and what ``torch.nn.functional.cross_entropy`` does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from mmseg.models.losses.utils import get_class_weight, weight_reduce_loss
from torch import Tensor, nn

REDUCTIONS = ('none', 'mean', 'sum')


def load_class_weight(class_weight: Sequence[float] | str | None) -> list | None:
    """Class weights from a list or a file (``.npy``, json, yaml, pkl), as mmseg reads them."""
    class_weight = get_class_weight(class_weight)
    if class_weight is None:
        return None
    return [float(w) for w in class_weight]


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f'reduction={reduction!r} is not one of {REDUCTIONS}')
    return reduction


def split_label(label: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Return ``(valid, safe_label)``: the mask of non-ignored pixels and labels with ignored
    pixels set to 0, so they can index ``gather`` without going out of range.

    A label outside ``[0, num_classes)`` that is not ``ignore_index`` is a data error (usually
    an ignore value the dataset did not map); it is reported here, where it would otherwise
    surface as an index error deep inside ``gather``.
    """
    valid = label != ignore_index
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    bad = (safe_label < 0) | (safe_label >= num_classes)
    if bool(bad.any()):
        value = int(safe_label[bad][0])
        raise ValueError(f'label value {value} is outside [0, {num_classes}) and is not '
                         f'ignore_index={ignore_index}: map it to the ignore index in the '
                         'dataset or set ignore_index on the decode head')
    return valid, safe_label.long()


def reduce_pixel_loss(loss: Tensor,
                      valid: Tensor,
                      safe_label: Tensor,
                      weight: Tensor | None = None,
                      class_weight: Sequence[float] | None = None,
                      reduction: str = 'mean',
                      avg_factor: float | None = None,
                      avg_non_ignore: bool = False) -> Tensor:
    """Mask, class-weight and reduce a per-pixel loss the way mmseg's cross-entropy does.

    Args:
        loss (Tensor): Per-pixel loss, shape ``(N, H, W)`` (any values at ignored pixels).
        valid (Tensor): Bool mask of non-ignored pixels, same shape.
        safe_label (Tensor): Labels with ignored pixels replaced by 0, same shape.
        weight (Tensor, optional): Per-pixel weight, same shape. Defaults to None.
        class_weight (Sequence[float], optional): One weight per class. Defaults to None.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        avg_factor (float, optional): Denominator of the mean. Defaults to None.
        avg_non_ignore (bool): Average over valid pixels only. Defaults to False.
    """
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if class_weight is not None:
        pixel_class_weight = loss.new_tensor(class_weight)[safe_label] * valid
        loss = loss * pixel_class_weight
    if avg_factor is None and reduction == 'mean':
        if class_weight is not None:
            avg_factor = pixel_class_weight.sum()
        elif avg_non_ignore:
            avg_factor = valid.sum()
        else:
            avg_factor = valid.numel()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)


def log_probs(pred: Tensor) -> Tensor:
    """Class log-probabilities in float32 at least, so fp16 logits (AMP) do not lose the
    small probabilities the calibration terms depend on."""
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    return torch.log_softmax(pred, dim=1)


class PixelLoss(nn.Module):
    """Base of the baseline losses: mmseg's ``CrossEntropyLoss`` interface around a per-pixel
    loss that subclasses define in :meth:`pixel_loss`.

    Args:
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'``. Defaults to ``'mean'``.
        class_weight (list[float] | str, optional): Weight of each class, or a file to read
            them from (as mmseg). Defaults to None.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        avg_non_ignore (bool): Average over non-ignored pixels only; mmseg's default False
            averages over all pixels. Defaults to False.
        loss_name (str): Name of the loss item; must start with ``loss_`` to be optimised.
    """

    def __init__(self,
                 reduction: str = 'mean',
                 class_weight: Sequence[float] | str | None = None,
                 loss_weight: float = 1.0,
                 avg_non_ignore: bool = False,
                 loss_name: str = 'loss_pixel'):
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.class_weight = load_class_weight(class_weight)
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore
        self._loss_name = loss_name

    def pixel_loss(self, pred: Tensor, label: Tensor) -> Tensor:
        """Per-pixel loss of shape ``label.shape`` from logits ``(N, C, ...)`` and labels in
        ``[0, C)`` (ignored pixels already replaced by 0; their values are discarded)."""
        raise NotImplementedError

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None,
                ignore_index: int = 255,
                **kwargs) -> Tensor:
        """Loss of logits ``pred`` ``(N, C, H, W)`` against labels ``target`` ``(N, H, W)``."""
        reduction = check_reduction(reduction_override or self.reduction)
        num_classes = pred.shape[1]
        if self.class_weight is not None and len(self.class_weight) != num_classes:
            raise ValueError(f'class_weight has {len(self.class_weight)} entries but the '
                             f'prediction has {num_classes} classes')
        valid, safe_label = split_label(target, num_classes, ignore_index)
        loss = reduce_pixel_loss(
            self.pixel_loss(pred, safe_label), valid, safe_label,
            weight=weight, class_weight=self.class_weight, reduction=reduction,
            avg_factor=avg_factor, avg_non_ignore=self.avg_non_ignore)
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return f'avg_non_ignore={self.avg_non_ignore}'

    @property
    def loss_name(self) -> str:
        """Name of the loss item; mmseg optimises items whose name starts with ``loss_``."""
        return self._loss_name
