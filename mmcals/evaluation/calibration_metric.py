"""``PixelCalibrationMetric``: dataset-level pixel calibration next to mmseg's IoUMetric.

Computes ECE, MCE, aECE, CECE, NLL and Brier score (docs/method.md §4; Liu et al., "Class Adaptive
Network Calibration", CVPR 2023) over every valid pixel of the evaluated dataset, logs them
with a per-class table, returns them to mmengine (logged next to mIoU) and writes
``calibration.json``, a reliability diagram and a confidence histogram.
"""
from __future__ import annotations

import logging
import os.path as osp
from collections.abc import Sequence
from typing import Optional, Union

from mmengine.dist import get_dist_info
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub, MMLogger, print_log
from mmengine.structures import BaseDataElement
from mmengine.visualization import Visualizer
from mmseg.registry import METRICS
from prettytable import PrettyTable

from .calibration_stats import CalibrationStats
from .results import CLASS_WISE_KEYS, METRIC_KEYS, save_calibration


@METRICS.register_module()
class PixelCalibrationMetric(BaseMetric):
    """Pixel calibration metrics over a whole dataset (docs/method.md §4), in percent.

    Use next to IoUMetric::

        val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),
                         dict(type='PixelCalibrationMetric')]

    Each image's logits (the data sample's ``seg_logits``, which mmseg fills at the label's
    size, also in slide inference) are reduced on their device to fixed-size tables
    (:class:`CalibrationStats`). Each rank keeps one running total, plus its latest image apart
    because that one may be the sampler's padding (a repeat that mmengine drops by position);
    the per-rank totals are merged through mmengine's ``collect_results``. Both live in
    ``self.results`` (mmengine's ``BaseMetric`` contract), so memory does not grow with the
    dataset, and 1 or N processes give the same numbers.

    Returned keys (mmengine logs them next to mIoU): ``ECE``, ``MCE``, ``aECE``, ``CECE``,
    ``NLL``, ``Brier``, ``mean_confidence``, ``pixel_accuracy`` (``CECE`` and ``Brier`` not with
    ``top_label_only``); NaN where undefined (no valid pixel).

    Files, written by rank 0 at each evaluation into ``out_dir`` (default: ``calibration/``
    beside the current log file; no files when there is no log file): ``calibration.json``
    (latest), ``calibration_history.jsonl`` (one line per evaluation),
    ``reliability_diagram.png`` and ``confidence_histogram.png``. The reliability diagram also
    goes to the run's visualizer as the image ``reliability_diagram`` (every backend: TensorBoard
    with ``--vis-backend tensorboard``, ``vis_data/vis_image/`` with the local one).

    Args:
        num_bins (int): Bins of ECE/MCE/CECE (equal width) and aECE (equal mass). Default: 15.
        ignore_index (int): Label value of pixels left out. Default: 255.
        classes (Sequence[int | str], optional): Classes (indices or names) averaged into
            CECE; those without ground-truth pixels are skipped. Default: None, every class
            present in the ground truth.
        top_label_only (bool): Skip CECE and the Brier score, the two that need every class's
            probability of every pixel, for speed. Default: False.
        out_dir (str, optional): Where to write the JSON and PNG files. Default: None.
        chunk_size (int, optional): Pixels processed at once; see :class:`CalibrationStats`.
            Default: None.
        collect_device (str): Device used to collect results across ranks. Default: 'cpu'.
        prefix (str, optional): Prefix of the metric names. Default: None.
    """

    #: Name of the reliability diagram image handed to the visualizer.
    visualizer_image = 'reliability_diagram'

    def __init__(self,
                 num_bins: int = 15,
                 ignore_index: int = 255,
                 classes: Optional[Sequence[Union[int, str]]] = None,
                 top_label_only: bool = False,
                 out_dir: Optional[str] = None,
                 chunk_size: Optional[int] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f'num_bins must be a positive int, got {num_bins!r}')
        if classes is not None and (isinstance(classes, (str, int)) or not len(classes)):
            raise ValueError(f'classes must be a non-empty list of class indices or names, got '
                             f'{classes!r}')
        self.num_bins = num_bins
        self.ignore_index = ignore_index
        self.classes = None if classes is None else list(classes)
        self.top_label_only = top_label_only
        self.out_dir = out_dir
        self.chunk_size = chunk_size
        self._said_no_files = False
        self._num_samples = 0

    def _new_stats(self, num_classes: int) -> CalibrationStats:
        return CalibrationStats(num_classes, self.num_bins, self.ignore_index,
                                self.top_label_only, chunk_size=self.chunk_size)

    def _class_names(self, num_classes: int) -> list:
        return class_names(self.dataset_meta, num_classes)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Reduce each sample's ``seg_logits`` and ``gt_sem_seg`` to calibration tables.

        Afterwards ``self.results`` holds what :meth:`compute_metrics` needs, in fixed memory:
        ``[running total, latest image]`` (two :class:`CalibrationStats`), so both mmengine's
        ``evaluate(size)`` and ``compute_metrics(metric.results)`` (the pattern of mmseg's
        metric tests, no padding to drop) give the numbers of the processed images.
        """
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            if 'seg_logits' not in sample:
                raise KeyError(
                    'PixelCalibrationMetric needs seg_logits in every data sample: the model\'s '
                    'predict() must return the per-class logits at the label size as '
                    'SegDataSample.seg_logits (mmseg segmentors do; a custom one must too), '
                    f'got fields {sorted(sample)}')
            if 'gt_sem_seg' not in sample:
                raise KeyError('PixelCalibrationMetric needs gt_sem_seg in every data sample; '
                               'the test pipeline must load annotations (LoadAnnotations)')
            logits = sample['seg_logits']['data']
            labels = sample['gt_sem_seg']['data']
            if not self.results:
                # Fail at the first image, not after the whole dataset, on bad class settings.
                self._class_indices(self._class_names(logits.shape[0]))
                self.results.append(self._new_stats(logits.shape[0]))
                self._num_samples = 0
            stats = self.results[0].empty_like()
            stats.update(logits, labels)
            if len(self.results) == 2:
                self.results[0] += self.results.pop()
            self.results.append(stats)
            self._num_samples += 1

    def evaluate(self, size: int) -> dict:
        """Drop this rank's padding, then collect and compute as mmengine does.

        mmengine's samplers give rank ``r`` the samples at positions ``r, r + W, ...`` and pad
        the last row with repeats; ``collect_results`` keeps positions ``< size``. Only this
        rank's latest sample can be such padding, which is why ``process`` keeps it apart
        (``results[1]``) from the running total (``results[0]``): here it is merged into the
        total or dropped, and each rank hands ``collect_results`` its one total.
        """
        rank, world_size = get_dist_info()
        if len(self.results) == 2:
            if (self._num_samples - 2) * world_size + rank >= size:
                self.results.clear()
                raise ValueError(
                    f'rank {rank} processed {self._num_samples} samples but evaluate(size='
                    f'{size}) with {world_size} process(es) allows at most one padded sample '
                    'per rank: size must be the length of the evaluated dataset')
            latest = self.results.pop()
            if (self._num_samples - 1) * world_size + rank < size:
                self.results[0] += latest
        self._num_samples = 0
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict:
        """Merge the per-rank tables, log the table, write the files, return the metrics."""
        if not results:
            print_log('PixelCalibrationMetric: no samples were processed', logger='current',
                      level=logging.WARNING)
            return {key: float('nan') for key in self._metric_keys()}
        total = results[0].empty_like()
        for stats in results:
            total += stats
        names = self._class_names(total.num_classes)
        summary = total.summary(names, self._class_indices(names))
        if summary['num_pixels'] == 0:
            print_log('PixelCalibrationMetric: no valid pixel in the evaluated data (every '
                      f'label is ignore_index={self.ignore_index})', logger='current',
                      level=logging.WARNING)
        print_log('\n' + format_table(summary), logger='current')
        self._write_files(summary)
        _send_to_visualizer(summary, self.visualizer_image)
        return {key: (float('nan') if summary['metrics'][key] is None
                      else summary['metrics'][key]) for key in self._metric_keys()}

    def _metric_keys(self) -> tuple:
        skipped = CLASS_WISE_KEYS if self.top_label_only else ()
        return tuple(key for key in METRIC_KEYS if key not in skipped)

    def _class_indices(self, names: list) -> Optional[list]:
        if self.classes is None:
            return None
        indices = []
        for cls in self.classes:
            if isinstance(cls, str):
                if cls not in names:
                    raise ValueError(f'class {cls!r} in PixelCalibrationMetric.classes is not a '
                                     f'class of the dataset: {names}')
                indices.append(names.index(cls))
            elif isinstance(cls, int) and 0 <= cls < len(names):
                indices.append(cls)
            else:
                raise ValueError(f'class index {cls!r} in PixelCalibrationMetric.classes is not '
                                 f'in [0, {len(names)})')
        return indices

    def _output_dir(self) -> Optional[str]:
        if self.out_dir is not None:
            return self.out_dir
        log_file = MMLogger.get_current_instance().log_file
        if log_file is None:
            if not self._said_no_files:
                print_log('PixelCalibrationMetric: the current logger has no log file and '
                          'out_dir is None, so no calibration files are written',
                          logger='current', level=logging.DEBUG)
                self._said_no_files = True
            return None
        return osp.join(osp.dirname(log_file), 'calibration')

    def _write_files(self, summary: dict) -> None:
        out_dir = self._output_dir()
        if out_dir is None:
            return
        from .plots import save_confidence_histogram, save_reliability_diagram

        save_calibration(summary, osp.join(out_dir, 'calibration.json'),
                         history=osp.join(out_dir, 'calibration_history.jsonl'))
        save_reliability_diagram(summary, osp.join(out_dir, 'reliability_diagram.png'))
        save_confidence_histogram(summary, osp.join(out_dir, 'confidence_histogram.png'))
        print_log(f'PixelCalibrationMetric: wrote calibration.json and diagrams to {out_dir}',
                  logger='current')


def class_names(dataset_meta: Optional[dict], num_classes: int) -> list:
    """The dataset's class names (``'0'``, ``'1'``, ... without any), checked against the
    number of channels of the logits, for the metrics that evaluate ``seg_logits``."""
    names = (dataset_meta or {}).get('classes')
    if names is None:
        return [str(k) for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f'seg_logits have {num_classes} channels but dataset_meta lists '
                         f"{len(names)} classes: the decode head's num_classes must match "
                         'the dataset')
    return [str(name) for name in names]


def _send_to_visualizer(summary: dict, name: str) -> None:
    """Give the reliability diagram to the run's visualizer, so that each of its backends
    (TensorBoard, the local ``vis_data/vis_image``, ...) gets it at every evaluation.

    The step is the number of training iterations done, as for the validation metrics that
    mmengine's LoggerHook logs in iteration-based runs (0 outside training).
    """
    # get_current_instance raises, and keeps mmengine's manager lock, when none exists.
    if not Visualizer._instance_dict:
        return
    from .plots import render_reliability_diagram

    iteration = MessageHub.get_current_instance().get_info('iter')  # index of the last one
    step = 0 if iteration is None else iteration + 1
    Visualizer.get_current_instance().add_image(
        name, render_reliability_diagram(summary), step=step)


def _fmt(value) -> str:
    return 'n/a' if value is None else f'{value:.2f}'


def format_table(summary: dict) -> str:
    """The summary and per-class tables of a ``calibration.json`` dict, as text."""
    metrics = summary['metrics']
    overall = PrettyTable()
    overall.field_names = ['pixels'] + list(metrics)
    overall.add_row([summary['num_pixels']] + [_fmt(v) for v in metrics.values()])
    per_class = PrettyTable()
    per_class.field_names = ['Class', 'pixels', 'CECE_k', 'ECE_k']
    for row in summary['per_class']:
        per_class.add_row([row['class'], row['pixels'], _fmt(row['CECE']), _fmt(row['ECE'])])
    per_class.align['Class'] = 'l'
    bound = summary.get('aECE_error_bound')
    bound = 'n/a' if bound is None else f'{bound:.2f}' if bound >= 0.01 else '< 0.01'
    return ('per-class calibration (percent; ECE_k: top-label ECE of the class\'s pixels):\n'
            f'{per_class.get_string()}\n'
            f'pixel calibration (percent, {summary["num_bins"]} bins; aECE within {bound} of '
            f'the exact sort-based value):\n{overall.get_string()}')
