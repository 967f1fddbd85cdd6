"""Post-hoc temperature scaling: fit one temperature on a split, report calibration on another.

    python tools/analysis/temperature_scaling.py CONFIG CHECKPOINT [--fit-split val]
        [--eval-split test] [--work-dir DIR] [--max-fit-pixels 1000000] [--seed 0]
        [--num-bins 15] [--device cpu|cuda] [--cfg-options KEY=VALUE ...]

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides every logit by one scalar ``T > 0`` fitted to minimise the NLL of held-out pixels. The
prediction (argmax) and so mIoU do not change; confidences do.

Fit: one pass over the fit split keeps a uniform random sample (without replacement) of at
most ``--max-fit-pixels`` valid pixels: each pixel draws a random key and the pixels with the
smallest keys are kept (bottom-k sampling), so memory is ``max-fit-pixels x classes`` floats
whatever the split's size, and the same seed gives the same sample. The
NLL is then minimised exactly on that sample, without running the model again: it is convex
in ``1/T``, so its minimiser in ``log T`` is the single sign change of a monotone derivative,
found by bisection in float64 over ``T ∈ [0.01, 100]``. With the default cap the NLL of the
sample estimates the split's NLL to a few parts in a thousand; raise the cap to use every
pixel of a small split.

Eval: a second pass over the eval split accumulates mmcals' streaming calibration statistics
(:class:`mmcals.evaluation.calibration_stats.CalibrationStats`) of the logits before and
after scaling, and a confusion matrix for mIoU.

Outputs in the work dir (default ``work_dirs/<config name>_ts``): ``temperature_scaling.json``
(the temperature, the fit details, mIoU and both metric sets), ``calibration.json`` of the
scaled model in the format the calibration metric writes, so that
``tools/analysis/compare_calibration.py`` can list the run next to the others, and
``reliability_before.png`` / ``reliability_after.png``. A table of the metrics before and
after is printed. Use a work dir of its own: compare_calibration reads the newest
``calibration.json`` below a work dir, so inside a training work dir this one would win.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import os.path as osp
import sys
from collections.abc import Iterator

import torch
from mmengine.config import DictAction
from torch import Tensor

import mmcals  # noqa: F401  (registers modules, applies stack fixes)
from mmcals import cli
from mmcals.evaluation.calibration_stats import CalibrationStats
from mmcals.evaluation.plots import save_reliability_diagram

SPLITS = ('train', 'val', 'test')
LOG_T_RANGE = (math.log(0.01), math.log(100.0))
REPORTED = ('ECE', 'MCE', 'aECE', 'CECE', 'NLL', 'Brier', 'mean_confidence', 'pixel_accuracy')
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Fit a temperature on one split, report calibration before/after on another')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--fit-split', default='val', choices=SPLITS,
                        help='split whose pixels the temperature is fitted on (default: val)')
    parser.add_argument('--eval-split', default='test', choices=SPLITS,
                        help='split the metrics are reported on (default: test)')
    parser.add_argument('--max-fit-pixels', type=int, default=1_000_000,
                        help='most valid pixels of the fit split kept, a uniform random sample '
                             '(memory: this x classes x 4 bytes; default 1000000)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the pixel sample')
    parser.add_argument('--num-bins', type=int, default=15, help='calibration bins (15)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='device of the model (default: cuda if available, else cpu)')
    parser.add_argument('--work-dir', help='output folder (default: work_dirs/<config>_ts)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. val_dataloader.dataset.indices=10')
    return parser.parse_args(argv)


def loader_config(cfg, split: str) -> dict:
    """The dataloader config of a split. ``train`` is read without augmentation: the test
    pipeline, no shuffling, one image per batch."""
    key = f'{split}_dataloader'
    loader = cfg.get(key)
    if not loader:
        raise cli.UsageError(f'the config has no {key}: choose another split with '
                             '--fit-split/--eval-split')
    loader = copy.deepcopy(loader.to_dict() if hasattr(loader, 'to_dict') else loader)
    if split == 'train':
        reference = cfg.get('test_dataloader') or cfg.get('val_dataloader')
        if not reference:
            raise cli.UsageError('--fit-split/--eval-split train needs a test or val dataloader '
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


def build_model(cfg, checkpoint: str, device: str):
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg['pretrained'] = None
    model_cfg['train_cfg'] = None
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'].pop('init_cfg', None)
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                    revise_keys=[(r'^module\.', '')])
    return revert_sync_batchnorm(model).to(device).eval()


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
    lines += [f'| {name} | {cell(before[name])} | {cell(after[name])} |' for name in REPORTED]
    return '\n'.join(lines)


def main(argv=None):
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    args = parse_args(argv)
    if args.max_fit_pixels < 1:
        raise cli.UsageError(f'--max-fit-pixels must be >= 1, got {args.max_fit_pixels}')
    cfg = cli.load_config(args.config, args.cfg_options)
    cli.check_checkpoint(args.checkpoint, 'checkpoint')
    splits = dict.fromkeys([args.fit_split, args.eval_split])
    loaders = {split: loader_config(cfg, split) for split in splits}
    cli.check_datasets({f'{split}_dataloader': loader for split, loader in loaders.items()},
                       [f'{split}_dataloader' for split in splits])
    work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0] + '_ts')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    ignore_index = cfg.model.get('decode_head', {}).get('ignore_index', 255)

    model = build_model(cfg, args.checkpoint, args.device)
    fit_loader = Runner.build_dataloader(loaders[args.fit_split])
    sample = PixelSample(args.max_fit_pixels, ignore_index, args.seed)
    for logits, labels in predictions(model, fit_loader):
        sample.add(logits, labels)
    if sample.logits is None:
        raise ValueError(f'the {args.fit_split} split holds no image')
    temperature, at_bound = fit_temperature(sample.logits, sample.labels)

    eval_loader = Runner.build_dataloader(loaders[args.eval_split])
    class_names = list(eval_loader.dataset.metainfo['classes'])
    evaluation = evaluate(model, eval_loader, temperature, args.num_bins, ignore_index,
                          class_names)
    result = {
        'config': args.config,
        'checkpoint': args.checkpoint,
        'temperature': temperature,
        'fit': {
            'split': args.fit_split,
            'method': 'bisection on dNLL/dlogT over a uniform pixel sample (bottom-k keys)',
            'pixels_seen': sample.seen,
            'pixels_used': len(sample.labels),
            'max_pixels': args.max_fit_pixels,
            'seed': args.seed,
            'at_search_bound': at_bound,
            'nll_before': nll(sample.logits, sample.labels, 1.0),
            'nll_after': nll(sample.logits, sample.labels, temperature),
        },
        'eval': {'split': args.eval_split, **evaluation},
    }
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, 'temperature_scaling.json'), 'w') as f:
        json.dump(result, f, indent=2)
    with open(osp.join(work_dir, 'calibration.json'), 'w') as f:
        json.dump(evaluation['after'], f, indent=2)
    for when in ('before', 'after'):
        ece = evaluation[when]['metrics']['ECE']
        title = f'{when} temperature scaling' + ('' if ece is None else f' (ECE {ece:.2f}%)')
        save_reliability_diagram(evaluation[when], osp.join(work_dir, f'reliability_{when}.png'),
                                 title)
    print(format_table(result))
    if at_bound:
        print(f'warning: the NLL minimum lies at the end of the searched range '
              f'(T = {temperature:g}); the fit split may be too small or perfectly separated',
              file=sys.stderr)
    if args.fit_split == args.eval_split:
        print(f'note: fitted and evaluated on the same split ({args.fit_split}): the "after" '
              'numbers are optimistic', file=sys.stderr)
    print(f'results written to {work_dir}')


if __name__ == '__main__':
    cli.run_tool(main)
