"""``LogitGapMetric``: how far a trained model's logit gaps reach, to choose CALS's margin.

CALS constrains the logit gaps ``d_k = z_a - z_k`` of every pixel (``a`` its winning class,
``k != a``) to stay below a margin ``m`` (docs/method.md §1); a margin the gaps never reach
leaves the penalty inactive (§5). This metric streams the per-class histogram of the gaps of
a dataset into fixed bins (:func:`mmcals.losses.logit_gaps.gap_histogram`) and reports, per
class and over all pairs, the gaps at chosen quantiles (the margin that the given share of
pairs would exceed) and the share of pairs each candidate margin would constrain.

``tools/analysis/logit_gaps.py`` runs it as the test evaluator of a trained model; see
:func:`configure_logit_gaps`.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import os.path as osp
from collections.abc import Sequence
from typing import Optional

import torch
from mmengine.dist import get_dist_info
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmengine.structures import BaseDataElement
from mmseg.registry import METRICS
from prettytable import PrettyTable
from torch import Tensor

from ..losses.logit_gaps import (
    GAP_BIN_WIDTH,
    GAP_NUM_BINS,
    GAP_RANGE,
    gap_histogram,
    gap_quantiles,
    share_above,
)
from .calibration_metric import class_names

DEFAULT_QUANTILES = (0.5, 0.9, 0.99)
DEFAULT_MARGINS = (5.0, 10.0, 20.0)  # half, once and twice the paper's margin of 10
SPLITS = ('val', 'test', 'train')
JSON_NAME = 'logit_gaps.json'
PNG_NAME = 'logit_gaps.png'


def quantile_key(q: float) -> str:
    """Metric name of a quantile: 0.5 -> ``gap_p50``, 0.999 -> ``gap_p99.9``."""
    return f'gap_p{round(q * 100, 6):g}'


def margin_key(m: float) -> str:
    """Metric name of a candidate margin: 10 -> ``share_above_10``."""
    return f'share_above_{m:g}'


def _finite_or_none(value: float) -> Optional[float]:
    return None if math.isnan(value) else float(value)


@METRICS.register_module()
class LogitGapMetric(BaseMetric):
    """Per-class histogram of the logit gaps ``d_k = z_a - z_k`` over a dataset (§1, §5).

    Each image's ``seg_logits`` (at the label size) are reduced on their device, in chunks of
    ``chunk_size`` pixels, to a (C, GAP_NUM_BINS) table of counts over the pixels whose label
    is not ``ignore_index``; each pair (pixel, ``k != a``) counts once. A rank keeps one
    running table plus its latest image apart, because that one may be the sampler's padding
    (a repeat mmengine drops by position), and the per-rank tables are merged by mmengine's
    ``collect_results``. The counts are integers held in float64, so the sums over images and
    ranks are exact and 1 or N processes give the same numbers, in fixed memory.

    Returned metrics (logged by mmengine): ``gap_p<100q>`` for each quantile ``q`` and
    ``share_above_<m>`` for each margin ``m``, over the pairs of all classes; NaN when no
    pair was counted.

    Files, written by rank 0 into ``out_dir`` (default: ``logit_gaps/`` beside the current
    log file; none without a log file), each replaced atomically: ``logit_gaps.json`` (per
    class and over all pairs: the pair count, the gap at each quantile, the share above each
    margin and the histogram counts) and ``logit_gaps.png`` (the histograms with the
    candidate margins drawn in).

    Args:
        quantiles (Sequence[float]): Quantiles in [0, 1] of the gaps to report; the gap at
            quantile ``q`` is the margin that a share ``1 - q`` of the pairs would exceed.
            Default: (0.5, 0.9, 0.99).
        margins (Sequence[float]): Candidate margins (> 0); for each, the share of pairs with
            a gap above it, which the CALS constraint would be violated on. Default:
            (5, 10, 20).
        ignore_index (int): Label value of pixels left out. Default: 255.
        out_dir (str, optional): Where to write the JSON and PNG. Default: None.
        split (str, optional): Name of the evaluated split, recorded in the JSON. Default:
            None.
        chunk_size (int): Pixels reduced at once, which bounds the working memory. Default:
            2**20.
        collect_device (str): Device used to collect results across ranks. Default: 'cpu'.
        prefix (str, optional): Prefix of the metric names. Default: None.
    """

    def __init__(self,
                 quantiles: Sequence[float] = DEFAULT_QUANTILES,
                 margins: Sequence[float] = DEFAULT_MARGINS,
                 ignore_index: int = 255,
                 out_dir: Optional[str] = None,
                 split: Optional[str] = None,
                 chunk_size: int = 2**20,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        self.quantiles = check_quantiles(quantiles)
        self.margins = check_margins(margins)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f'chunk_size must be a positive int, got {chunk_size!r}')
        self.ignore_index = ignore_index
        self.out_dir = out_dir
        self.split = split
        self.chunk_size = chunk_size
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._running: Optional[Tensor] = None
        self._latest: Optional[Tensor] = None
        self._num_samples = 0

    def image_histogram(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The (C, GAP_NUM_BINS) gap counts of one image: logits (C, H, W), labels (1, H, W)."""
        num_classes = logits.shape[0]
        flat = logits.reshape(num_classes, -1)
        valid = (labels.reshape(-1) != self.ignore_index).to(flat.device)
        if valid.numel() != flat.shape[1]:
            raise ValueError(f'seg_logits cover {flat.shape[1]} pixels but gt_sem_seg has '
                             f'{valid.numel()}: the logits must be at the label size')
        hist = torch.zeros(num_classes, GAP_NUM_BINS, dtype=torch.float64)
        for start in range(0, flat.shape[1], self.chunk_size):
            stop = start + self.chunk_size
            hist += gap_histogram(flat[None, :, start:stop], valid[start:stop]).cpu()
        return hist

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Add each sample's gap histogram (``seg_logits``, ``gt_sem_seg``) to the stream."""
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            if 'seg_logits' not in sample:
                raise KeyError('LogitGapMetric needs seg_logits in every data sample: the '
                               "model's predict() must return the per-class logits as "
                               f'SegDataSample.seg_logits, got fields {sorted(sample)}')
            if 'gt_sem_seg' not in sample:
                raise KeyError('LogitGapMetric needs gt_sem_seg in every data sample (the '
                               'valid pixels); the pipeline must load annotations '
                               '(LoadAnnotations)')
            hist = self.image_histogram(sample['seg_logits']['data'],
                                        sample['gt_sem_seg']['data'])
            if self._running is None:
                self._class_names(hist.shape[0])  # fail at the first image on a mismatch
                self._running = torch.zeros_like(hist)
            if self._latest is not None:
                self._running += self._latest
            self._latest = hist
            self._num_samples += 1

    def evaluate(self, size: int) -> dict:
        """Drop this rank's padding, then collect and compute as mmengine does.

        mmengine's samplers give rank ``r`` the samples at positions ``r, r + W, ...`` and pad
        the last row with repeats; ``collect_results`` keeps positions ``< size``. Only this
        rank's latest sample can be such padding, which is why it is kept apart.
        """
        rank, world_size = get_dist_info()
        total = self._running
        if self._latest is not None:
            if (self._num_samples - 2) * world_size + rank >= size:
                raise ValueError(
                    f'rank {rank} processed {self._num_samples} samples but evaluate(size='
                    f'{size}) with {world_size} process(es) allows at most one padded sample '
                    'per rank: size must be the length of the evaluated dataset')
            if (self._num_samples - 1) * world_size + rank < size:
                total += self._latest
        self.results = [] if total is None else [total]
        self._reset_stream()
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict:
        """Sum the per-rank histograms, log the table, write the files, return the metrics."""
        if not results:
            print_log('LogitGapMetric: no samples were processed', logger='current',
                      level=logging.WARNING)
            return {key: float('nan') for key in self._metric_keys()}
        hist = torch.stack([part.to(torch.float64).cpu() for part in results]).sum(0)
        summary = summarize(hist, self._class_names(hist.shape[0]), self.quantiles,
                            self.margins, split=self.split)
        if summary['all']['pairs'] == 0:
            print_log('LogitGapMetric: no valid pixel in the evaluated data (every label is '
                      f'ignore_index={self.ignore_index})', logger='current',
                      level=logging.WARNING)
        print_log('\n' + format_table(summary), logger='current')
        self._write_files(summary)
        overall = summary['all']
        metrics = {quantile_key(q): overall['gap_at_quantile'][f'{q:g}']
                   for q in self.quantiles}
        metrics.update({margin_key(m): overall['share_above'][f'{m:g}'] for m in self.margins})
        return {key: float('nan') if value is None else value for key, value in metrics.items()}

    def _metric_keys(self) -> list:
        return [quantile_key(q) for q in self.quantiles] + [margin_key(m) for m in self.margins]

    def _class_names(self, num_classes: int) -> list:
        return class_names(self.dataset_meta, num_classes)

    def _output_dir(self) -> Optional[str]:
        if self.out_dir is not None:
            return self.out_dir
        log_file = MMLogger.get_current_instance().log_file
        return None if log_file is None else osp.join(osp.dirname(log_file), 'logit_gaps')

    def _write_files(self, summary: dict) -> None:
        out_dir = self._output_dir()
        if out_dir is None:
            print_log('LogitGapMetric: the current logger has no log file and out_dir is '
                      'None, so no files are written', logger='current', level=logging.WARNING)
            return
        os.makedirs(out_dir, exist_ok=True)
        json_path, png_path = osp.join(out_dir, JSON_NAME), osp.join(out_dir, PNG_NAME)
        # Written beside and renamed into place: a failed run leaves no half-written file.
        with open(json_path + '.tmp', 'w') as f:
            json.dump(summary, f, indent=1)
        save_gap_histograms(summary, png_path + '.tmp')
        os.replace(json_path + '.tmp', json_path)
        os.replace(png_path + '.tmp', png_path)
        print_log(f'LogitGapMetric: wrote {JSON_NAME} and {PNG_NAME} to {out_dir}',
                  logger='current')


def check_quantiles(quantiles: Sequence[float]) -> list:
    """The quantiles as floats, or a ValueError naming the bad value."""
    values = _floats(quantiles, 'quantiles')
    bad = [q for q in values if not 0 <= q <= 1]
    if bad:
        raise ValueError(f'quantiles must lie in [0, 1], got {bad[0]:g} (e.g. 0.5 0.9 0.99)')
    return values


def check_margins(margins: Sequence[float]) -> list:
    """The candidate margins as floats, or a ValueError naming the bad value."""
    values = _floats(margins, 'margins')
    bad = [m for m in values if not 0 < m < math.inf]
    if bad:
        raise ValueError(f'margins must be finite and > 0, got {bad[0]:g} (e.g. 5 10 20)')
    return values


def _floats(values, what: str) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f'{what} must be a non-empty list of numbers, got {values!r}')
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f'{what} must be a list of numbers, got {values!r}') from None


def _row(hist: Tensor, quantiles: list, margins: list) -> dict:
    """Pair count, gaps at the quantiles, shares above the margins and counts of a histogram."""
    at = gap_quantiles(hist, quantiles).tolist()
    return {'pairs': int(hist.sum().item()),
            'gap_at_quantile': {f'{q:g}': _finite_or_none(v) for q, v in zip(quantiles, at)},
            'share_above': {f'{m:g}': _finite_or_none(float(share_above(hist, m)))
                            for m in margins},
            'counts': [int(c) for c in hist.tolist()]}


def summarize(hist: Tensor, class_names: list, quantiles: Sequence[float] = DEFAULT_QUANTILES,
              margins: Sequence[float] = DEFAULT_MARGINS, split: Optional[str] = None) -> dict:
    """The ``logit_gaps.json`` dict of a (C, GAP_NUM_BINS) histogram of gap counts.

    Quantiles interpolate inside their bin and shares split the bin that holds the margin,
    so both are within one bin width (GAP_BIN_WIDTH) of the exact values; gaps beyond
    GAP_RANGE saturate at the lower edge of the last bin. Values are None without pairs.
    """
    quantiles, margins = check_quantiles(quantiles), check_margins(margins)
    hist = hist.to(torch.float64).cpu()
    return {
        'split': split,
        'bin_width': GAP_BIN_WIDTH,
        'num_bins': GAP_NUM_BINS,
        'range': GAP_RANGE,
        'quantiles': quantiles,
        'margins': margins,
        'classes': list(class_names),
        'all': _row(hist.sum(0), quantiles, margins),
        'per_class': [dict(_row(hist[k], quantiles, margins), **{'class': name})
                      for k, name in enumerate(class_names)],
    }


def _fmt(value, percent: bool = False) -> str:
    if value is None:
        return 'n/a'
    return f'{100 * value:.2f}' if percent else f'{value:.2f}'


def format_table(summary: dict) -> str:
    """Per-class and pooled gaps at the quantiles and shares above the margins, as text."""
    quantiles = [f'{q:g}' for q in summary['quantiles']]
    margins = [f'{m:g}' for m in summary['margins']]
    table = PrettyTable()
    table.field_names = (['Class', 'pairs'] + [f'gap@q{q}' for q in quantiles]
                         + [f'%>{m}' for m in margins])
    for row in summary['per_class'] + [dict(summary['all'], **{'class': 'all pairs'})]:
        table.add_row([row['class'], row['pairs']]
                      + [_fmt(row['gap_at_quantile'][q]) for q in quantiles]
                      + [_fmt(row['share_above'][m], percent=True) for m in margins])
    table.align['Class'] = 'l'
    where = f' on the {summary["split"]} split' if summary.get('split') else ''
    return (f'logit gaps z_winner - z_k{where} (gap@q: the margin that a share 1 - q of the '
            f'pairs exceeds; %>m: percent of pairs a margin m would constrain; within one bin '
            f'of {summary["bin_width"]:g}):\n{table.get_string()}')


def save_gap_histograms(summary: dict, path: str) -> None:
    """Draw each class's gap histogram (and the pooled one) with the margins, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [dict(summary['all'], **{'class': 'all pairs'})] + summary['per_class']
    width = summary['bin_width']
    # Show up to the largest margin or the pooled 99.9th percentile, whichever is further.
    pooled = torch.tensor(summary['all']['counts'], dtype=torch.float64)
    reach = gap_quantiles(pooled, [0.999])[0].item() if pooled.sum() > 0 else 0.0
    right = min(GAP_RANGE, 1.1 * max([reach] + summary['margins'])) + width
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    figure = Figure(figsize=(3.2 * cols, 2.3 * nrows), dpi=80, constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, cols, squeeze=False).ravel()
    shown = min(summary['num_bins'], math.ceil(right / width))
    edges = [i * width for i in range(shown + 1)]
    colours = ('tab:green', 'tab:orange', 'tab:red', 'tab:purple', 'tab:brown')
    for ax, row in zip(axes, rows):
        total = max(row['pairs'], 1)
        ax.stairs([c / total for c in row['counts'][:shown]], edges, fill=True,
                  color='tab:blue')
        for i, margin in enumerate(summary['margins']):
            share = row['share_above'][f'{margin:g}']
            label = f'm={margin:g}: ' + ('n/a' if share is None else f'{100 * share:.1f}%')
            ax.axvline(margin, color=colours[i % len(colours)], linestyle='--', linewidth=1,
                       label=label)
        ax.set_yscale('log')
        ax.set_xlim(0, right)
        ax.set_title(f'{row["class"]} ({row["pairs"]} pairs)', fontsize='small')
        ax.tick_params(labelsize='x-small')
        ax.legend(fontsize='xx-small', loc='upper right')
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    figure.supxlabel('logit gap z_winner - z_k', fontsize='small')
    figure.supylabel('share of pairs per bin', fontsize='small')
    figure.savefig(path, format='png')


def _leaf_datasets(dataset_cfg: dict):
    if 'datasets' in dataset_cfg:
        for child in dataset_cfg['datasets']:
            yield from _leaf_datasets(child)
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from _leaf_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _test_pipeline(cfg) -> list:
    if cfg.get('test_pipeline'):
        return copy.deepcopy(cfg.test_pipeline)
    for key in ('test_dataloader', 'val_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('dataset'):
            pipeline = next(_leaf_datasets(loader['dataset'])).get('pipeline')
            if pipeline:
                return copy.deepcopy(pipeline)
    raise ValueError('the config has no test pipeline (test_pipeline, or a pipeline in '
                     'test_dataloader/val_dataloader) to load the train split without '
                     'augmentation')


def _ignore_index(cfg) -> int:
    head = cfg.get('model', {}).get('decode_head')
    if isinstance(head, dict):
        return int(head.get('ignore_index', 255))
    return 255


def configure_logit_gaps(cfg, split: str = 'val',
                         quantiles: Sequence[float] = DEFAULT_QUANTILES,
                         margins: Sequence[float] = DEFAULT_MARGINS,
                         out_dir: Optional[str] = None) -> None:
    """Turn a training config into a test run that measures the logit gaps of ``split``.

    The test loop runs over the ``<split>_dataloader``'s dataset, with ``LogitGapMetric`` as
    the only evaluator. The train split is read in order, once, through the test pipeline
    (no random augmentation), one image per batch. Changes ``cfg`` in place.

    Args:
        cfg (Config): A config with the split's dataloader.
        split (str): ``'val'``, ``'test'`` or ``'train'``. Default: ``'val'``.
        quantiles (Sequence[float]): See :class:`LogitGapMetric`.
        margins (Sequence[float]): See :class:`LogitGapMetric`.
        out_dir (str, optional): See :class:`LogitGapMetric`.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    quantiles, margins = check_quantiles(quantiles), check_margins(margins)
    loader = cfg.get(f'{split}_dataloader')
    if not loader or not loader.get('dataset'):
        raise ValueError(f'the config has no {split}_dataloader with a dataset to measure')
    loader = copy.deepcopy(loader)
    if split == 'train':
        pipeline = _test_pipeline(cfg)
        for dataset in _leaf_datasets(loader['dataset']):
            dataset['pipeline'] = copy.deepcopy(pipeline)
        test_loader = cfg.get('test_dataloader') or {}
        loader = dict(batch_size=1, num_workers=test_loader.get('num_workers', 0),
                      persistent_workers=False, dataset=loader['dataset'],
                      sampler=dict(type='DefaultSampler', shuffle=False))
    cfg.test_dataloader = loader
    cfg.test_evaluator = dict(type='LogitGapMetric', quantiles=quantiles, margins=margins,
                              ignore_index=_ignore_index(cfg), out_dir=out_dir, split=split)
    cfg.test_cfg = dict(type='TestLoop')
