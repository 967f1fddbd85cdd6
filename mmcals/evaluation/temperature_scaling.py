"""Post-hoc temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML
2017): the logic of ``tools/analysis/temperature_scaling.py``, whose docstring documents the
method and the command line.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..cli import UsageError
from .calibration_stats import CalibrationStats
from .results import METRIC_KEYS

SPLITS = ('train', 'val', 'test')
LOG_T_RANGE = (math.log(0.01), math.log(100.0))
_CHUNK = 1 << 18


class PixelSample:
    """A uniform sample without replacement of at most ``capacity`` valid pixels of a stream.

    Every valid pixel draws a uniform key; the ``capacity`` pixels with the smallest keys are
    kept (bottom-k sampling). Memory: the sample plus one image.

    Args:
        capacity (int): Most pixels kept.
        ignore_index (int): Label of pixels left out.
        seed (int): Seed of the keys.
    """

    def __init__(self, capacity: int, ignore_index: int = 255, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f'the pixel cap must be >= 1, got {capacity}')
        self.capacity = capacity
        self.ignore_index = ignore_index
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self.keys = torch.empty(0, dtype=torch.float64)
        self.logits: Tensor | None = None
        self.labels = torch.empty(0, dtype=torch.int64)

    def add(self, logits: Tensor, labels: Tensor) -> None:
        """Offer the pixels of one image: ``logits (C, H, W)``, ``labels (H, W)``."""
        z = logits.detach().reshape(logits.shape[0], -1).t().float().cpu()
        y = labels.reshape(-1).to(device='cpu', dtype=torch.int64)
        valid = y != self.ignore_index
        z, y = z[valid], y[valid]
        self.seen += len(y)
        keys = torch.rand(len(y), generator=self.generator, dtype=torch.float64)
        if len(self.keys) == self.capacity:  # full: only keys below the current largest can enter
            enter = keys < self.keys.max()
            z, y, keys = z[enter], y[enter], keys[enter]
        if self.logits is None:
            self.logits = z[:0]
        self.keys = torch.cat([self.keys, keys])
        self.logits = torch.cat([self.logits, z])
        self.labels = torch.cat([self.labels, y])
        if len(self.keys) > self.capacity:
            keep = torch.topk(self.keys, self.capacity, largest=False).indices
            self.keys, self.logits, self.labels = (
                self.keys[keep], self.logits[keep], self.labels[keep])


def nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean ``-log softmax(z / T)_y`` in float64, chunked."""
    total = 0.0
    for start in range(0, len(labels), _CHUNK):
        z = logits[start:start + _CHUNK].double() / temperature
        y = labels[start:start + _CHUNK]
        total += float(torch.nn.functional.cross_entropy(z, y, reduction='sum'))
    return total / len(labels)


def _nll_slope(logits: Tensor, labels: Tensor, log_t: float) -> float:
    """d NLL / d log T. With β = 1/T, dNLL/dβ = mean(E_p[z] - z_y) grows with β (convexity),
    and dβ/dlogT = -β, so this slope grows with log T: its sign change is the minimum."""
    beta = math.exp(-log_t)
    total = 0.0
    for start in range(0, len(labels), _CHUNK):
        z = logits[start:start + _CHUNK].double()
        y = labels[start:start + _CHUNK]
        p = torch.softmax(beta * z, dim=1)
        total += float(((p * z).sum(1) - z.gather(1, y[:, None])[:, 0]).sum())
    return -beta * total / len(labels)


def fit_temperature(logits: Tensor, labels: Tensor, tol: float = 1e-10) -> tuple[float, bool]:
    """The ``T`` in ``[0.01, 100]`` minimising the NLL of ``logits (N, C)`` / ``labels (N,)``.

    Bisection on the sign of ``dNLL/dlog T`` (see :func:`_nll_slope`). Returns ``(T,
    at_bound)``; ``at_bound`` says the minimum lies at (or beyond) an end of the range, e.g.
    when every sampled pixel is classified correctly and the NLL keeps falling as ``T -> 0``.
    """
    if len(labels) == 0:
        raise ValueError('no valid pixel to fit the temperature on: the fit split holds only '
                         'ignored labels')
    lo, hi = LOG_T_RANGE
    if _nll_slope(logits, labels, lo) >= 0:
        return math.exp(lo), True
    if _nll_slope(logits, labels, hi) <= 0:
        return math.exp(hi), True
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if _nll_slope(logits, labels, mid) > 0:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi)), False


class ConfusionMatrix:
    """Pixel confusion counts for mIoU, computed like mmseg's IoUMetric (NaN-mean over classes
    whose union is not empty)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)

    def update(self, logits: Tensor, labels: Tensor) -> None:
        pred = logits.argmax(0).reshape(-1).cpu()
        y = labels.reshape(-1).to(device='cpu', dtype=torch.int64)
        valid = y != self.ignore_index
        index = y[valid] * self.num_classes + pred[valid]
        self.counts += torch.bincount(index, minlength=self.num_classes ** 2)

    def miou(self) -> float | None:
        matrix = self.counts.reshape(self.num_classes, self.num_classes).double()
        tp = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - tp
        present = union > 0
        if not bool(present.any()):
            return None
        return 100.0 * float((tp[present] / union[present]).mean())


def loader_config(cfg, split: str) -> dict:
    """The dataloader config of a split. ``train`` is read without augmentation: the test
    pipeline, no shuffling, one image per batch."""
    key = f'{split}_dataloader'
    loader = cfg.get(key)
    if not loader:
        raise UsageError(f'the config has no {key}: choose another split with '
                             '--fit-split/--eval-split')
    loader = copy.deepcopy(loader.to_dict() if hasattr(loader, 'to_dict') else loader)
    if split == 'train':
        reference = cfg.get('test_dataloader') or cfg.get('val_dataloader')
        if not reference:
            raise UsageError('--fit-split/--eval-split train needs a test or val dataloader '
                                 'whose pipeline it can borrow')
        loader['dataset'] = _with_pipeline(loader['dataset'], reference['dataset']['pipeline'])
        loader['sampler'] = {'type': 'DefaultSampler', 'shuffle': False}
        loader['batch_size'] = 1
    loader['persistent_workers'] = False
    return loader


def _with_pipeline(dataset: dict, pipeline: list) -> dict:
    """The dataset config with ``pipeline`` on every leaf dataset; a wrapper that repeats or
    resamples one dataset (``dataset=...``) is dropped: one pass over the images is wanted."""
    if isinstance(dataset.get('dataset'), dict):
        return _with_pipeline(dataset['dataset'], pipeline)
    if 'datasets' in dataset:
        dataset['datasets'] = [_with_pipeline(d, pipeline) for d in dataset['datasets']]
        return dataset
    dataset['pipeline'] = copy.deepcopy(pipeline)
    return dataset


def predictions(model, loader) -> Iterator[tuple[Tensor, Tensor]]:
    """Logits ``(C, H, W)`` at label size and labels ``(H, W)``, one image at a time."""
    with torch.no_grad():
        for batch in loader:
            for sample in model.test_step(batch):
                yield sample.seg_logits.data, sample.gt_sem_seg.data[0]


def evaluate(model, loader, temperature: float, num_bins: int, ignore_index: int,
             class_names) -> dict:
    before = after = confusion = None
    for logits, labels in predictions(model, loader):
        if before is None:
            num_classes = logits.shape[0]
            before = CalibrationStats(num_classes, num_bins, ignore_index)
            after = CalibrationStats(num_classes, num_bins, ignore_index)
            confusion = ConfusionMatrix(num_classes, ignore_index)
        before.update(logits, labels)
        after.update(logits / temperature, labels)
        confusion.update(logits, labels)
    if before is None:
        raise ValueError('the eval split holds no image')
    return {'mIoU': confusion.miou(), 'before': before.summary(class_names),
            'after': after.summary(class_names)}


def format_table(result: dict) -> str:
    before = result['eval']['before']['metrics']
    after = result['eval']['after']['metrics']

    def cell(value):
        return '-' if value is None else f'{value:.2f}'

    fit, evaluation = result['fit'], result['eval']
    heading = (f"temperature {result['temperature']:.4f} fitted on {fit['split']} "
               f"({fit['pixels_used']} of {fit['pixels_seen']} valid pixels); metrics in "
               f"percent on {evaluation['split']} ({evaluation['before']['num_pixels']} "
               f"pixels), mIoU {cell(evaluation['mIoU'])}")
    lines = [heading, '| metric | before | after |', '| --- | ---: | ---: |']
    lines += [f'| {name} | {cell(before[name])} | {cell(after[name])} |' for name in METRIC_KEYS]
    return '\n'.join(lines)
