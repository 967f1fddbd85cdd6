"""Cheap per-sample input checks that name the offending file (the tools insert them)."""
from __future__ import annotations

import os

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


class BadLabelError(ValueError):
    """A label map holds a value that is neither a class nor the ignore index."""


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Fail with the file's name when ``gt_seg_map`` has a value outside ``0..num_classes-1``.

    Without it, a stray value (say 200 in a 19-class set) ends training deep inside the loss
    with ``IndexError: Target 200 is out of bounds`` and no file named. Put it right after
    ``LoadAnnotations`` (the tools do so for training pipelines). The check is two
    vectorised comparisons per image.

    Args:
        num_classes (int): Number of classes of the model's decode head.
        ignore_index (int): Label value that is not a class. Default: 255.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'CheckSegLabels num_classes={num_classes!r} must be an int >= 1')
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        label = results.get('gt_seg_map')
        if label is None:
            return results
        bad = (label >= self.num_classes) | (label < 0)
        bad &= label != self.ignore_index
        if bad.any():
            values = np.unique(label[bad])
            shown = ', '.join(str(v) for v in values[:5])
            raise BadLabelError(
                f'label map {results.get("seg_map_path", "?")} holds value(s) {shown} outside '
                f'the {self.num_classes} classes 0..{self.num_classes - 1} (ignore index '
                f'{self.ignore_index}): fix the file, or map the value with the dataset\'s '
                'label_map / reduce_zero_label')
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index})')


class BadImageError(ValueError):
    """An image or label file is empty or cut off."""


# The IEND chunk closes every complete PNG; libpng rejects a PNG cut before it (with its own
# message on stderr). A cut JPEG decodes with a grey tail, so its end is not checked.
_PNG_END = b'IEND\xaeB`\x82'


@TRANSFORMS.register_module()
class CheckSampleFiles(BaseTransform):
    """Fail with the file's name when a sample's image or label file is empty or truncated.

    mmcv's decoder reports an empty file without its name and a truncated PNG through
    libpng's own message. This check runs before ``LoadImageFromFile`` (the tools insert it):
    one ``stat`` per file, and for PNG files a read of the last kilobyte, which must hold
    the ``IEND`` chunk every complete PNG ends with. Other formats are checked for being
    empty only.
    """

    def transform(self, results: dict) -> dict:
        for key, what in (('img_path', 'image'), ('seg_map_path', 'label')):
            path = results.get(key)
            if not isinstance(path, str) or '://' in path:
                continue
            size = os.path.getsize(path)
            if size == 0:
                raise BadImageError(f'{what} file {path} is empty (0 bytes): '
                                    'replace it, or remove it from the dataset')
            if not path.lower().endswith('.png'):
                continue
            with open(path, 'rb') as f:
                f.seek(max(0, size - 1024))
                tail = f.read()
            if _PNG_END not in tail:
                raise BadImageError(f'{what} file {path} is truncated (no end '
                                    'marker): replace it, or remove it from the dataset')
        return results
