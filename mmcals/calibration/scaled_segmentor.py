"""``TemperatureScaledSegmentor``: an mmseg segmentor whose ``seg_logits`` are ``z / T``.

A config selects it by naming it as the model's type and the segmentor's own type next to
it; every other key of the model dict is the segmentor's, as before::

    model = dict(type='TemperatureScaledSegmentor', segmentor_type='EncoderDecoder',
                 temperature=1.7, backbone=..., decode_head=..., ...)

``tools/analysis/temperature_scaling.py`` writes such a config (``<config>_ts.py``: the
user's config as ``_base_`` plus these three keys), so ``tools/test.py`` and
``mmseg.apis.init_model`` / ``inference_model`` return calibrated logits.

The model built is an instance of the segmentor's own class, subclassed once with
:class:`TemperatureScaling` (e.g. ``TemperatureScaledEncoderDecoder``): no wrapping module,
so its state dict has exactly the keys of the plain segmentor, and a checkpoint of the plain
model loads into it unchanged (and the other way round). The temperature is a plain
attribute, not a tensor, so it is not part of the state dict either: it lives in the config.
"""
from __future__ import annotations

from typing import Optional

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS

from .temperature import Temperature, check_temperature, scale_logits

_SCALED_CLASSES: dict = {}


def _num_classes(segmentor: BaseSegmentor) -> Optional[int]:
    head = getattr(segmentor, 'decode_head', None)
    if isinstance(head, torch.nn.ModuleList):
        head = head[-1]  # cascade heads: the last one predicts
    return getattr(head, 'out_channels', None)


def check_head(segmentor: BaseSegmentor) -> Optional[int]:
    """The number of classes the segmentor predicts; a ValueError for a sigmoid head."""
    num_classes = _num_classes(segmentor)
    if num_classes == 1:
        raise ValueError('temperature scaling needs a decode head with one logit per class '
                         '(out_channels > 1); this one predicts with a sigmoid '
                         '(out_channels=1), whose threshold a temperature would move')
    return num_classes


class TemperatureScaling:
    """What a scaled segmentor adds to its class: ``postprocess_result`` divides each
    sample's final ``seg_logits`` (at the original image size, after mmseg's own
    post-processing) by the temperature (docs/method.md §6), with
    :func:`~mmcals.calibration.temperature.scale_logits`.

    A single ``T`` leaves every prediction unchanged (``argmax z / T = argmax z``), so
    ``pred_sem_seg`` is mmseg's own. A per-class ``T_k`` can change the winner of a pixel, so
    ``pred_sem_seg`` is then recomputed as the argmax of the scaled logits. With
    ``keep_uncalibrated`` each sample also carries the unscaled logits as
    ``seg_logits_uncalibrated`` (what ``UncalibratedCalibrationMetric`` reads).
    """

    temperature: Temperature = 1.0
    keep_uncalibrated: bool = False

    def set_temperature(self, temperature: Temperature, keep_uncalibrated: bool = False) -> None:
        """Check and set ``T`` (a number, or one per class of the decode head)."""
        self.temperature = check_temperature(temperature, check_head(self))
        self.keep_uncalibrated = bool(keep_uncalibrated)

    def postprocess_result(self, seg_logits, data_samples=None):
        samples = super().postprocess_result(seg_logits, data_samples)
        per_class = isinstance(self.temperature, tuple)
        for sample in samples:
            raw = sample.seg_logits.data
            scaled = scale_logits(raw, self.temperature, dim=0)
            fields = {'seg_logits': PixelData(data=scaled)}
            if per_class:
                fields['pred_sem_seg'] = PixelData(data=scaled.argmax(dim=0, keepdim=True))
            if self.keep_uncalibrated:
                fields['seg_logits_uncalibrated'] = PixelData(data=raw)
            sample.set_data(fields)
        return samples


def scaled_class(base: type) -> type:
    """``base`` (a segmentor class) with :class:`TemperatureScaling`, made once per class."""
    if base not in _SCALED_CLASSES:
        _SCALED_CLASSES[base] = type(
            f'TemperatureScaled{base.__name__}', (TemperatureScaling, base),
            {'__module__': __name__,
             '__doc__': f'{base.__name__} whose seg_logits are divided by a temperature.'})
    return _SCALED_CLASSES[base]


def resolve_segmentor(segmentor_type) -> type:
    """The segmentor class a config's ``type`` names; a ValueError if it is none."""
    base = MODELS.get(segmentor_type) if isinstance(segmentor_type, str) else segmentor_type
    if not isinstance(base, type) or not issubclass(base, BaseSegmentor):
        raise ValueError(f'segmentor_type {segmentor_type!r} is not a registered mmseg '
                         'segmentor (e.g. EncoderDecoder)')
    if issubclass(base, TemperatureScaling):
        raise ValueError(f'segmentor_type {segmentor_type!r} is already temperature-scaled')
    return base


@MODELS.register_module(name='TemperatureScaledSegmentor')
def build_temperature_scaled_segmentor(segmentor_type: str, temperature: Temperature = 1.0,
                                       keep_uncalibrated: bool = False, **segmentor_args):
    """``type='TemperatureScaledSegmentor'``: build ``segmentor_type`` from
    ``segmentor_args`` with its ``seg_logits`` divided by ``temperature`` (see
    :class:`TemperatureScaling`).

    Args:
        segmentor_type (str): The segmentor's registered type, e.g. ``'EncoderDecoder'``.
        temperature (float | list[float]): ``T > 0``, or one ``T_k > 0`` per class.
            Default: 1.0.
        keep_uncalibrated (bool): Also return the unscaled logits, as
            ``seg_logits_uncalibrated``. Default: False.
        **segmentor_args: The segmentor's own arguments (backbone, decode_head, ...).
    """
    model = scaled_class(resolve_segmentor(segmentor_type))(**segmentor_args)
    model.set_temperature(temperature, keep_uncalibrated)
    return model
