"""The logic of ``tools/analysis/temperature_scaling.py`` (whose docstring documents the command
line): fit the temperature through mmengine's test loop on one split, write a config whose
model applies it, and evaluate that model on another split through the test loop again.

- :class:`TemperatureFitMetric`: the fit, as a test evaluator (pixel sample per rank, merged
  exactly across ranks, fitted on rank 0, the result broadcast by mmengine).
- :class:`UncalibratedCalibrationMetric`: ``PixelCalibrationMetric`` of the logits before
  scaling, next to the usual one on the scaled logits, in the same pass.
- :func:`configure_fit`, :func:`configure_evaluation`: the two test runs' configs;
  :func:`check_disjoint_images`: the fit and eval splits share no image;
  :func:`write_scaled_config`: ``<config>_ts.py``.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import os.path as osp
import tempfile
import textwrap
from collections.abc import Sequence
from typing import Optional

from mmengine.config import Config
from mmengine.dist import get_dist_info
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from mmengine.structures import BaseDataElement
from mmseg.registry import METRICS

from ..cli import UsageError
from ..evaluation.calibration_metric import PixelCalibrationMetric, class_names
from ..evaluation.results import METRIC_KEYS
from .temperature import PixelSample, fit_class_temperatures, fit_temperature, nll

SPLITS = ('train', 'val', 'test')
SCALED_TYPE = 'TemperatureScaledSegmentor'
UNCALIBRATED_FIELD = 'seg_logits_uncalibrated'
UNCALIBRATED_PREFIX = 'uncalibrated'


def _as_dict(sample) -> dict:
    return sample.to_dict() if isinstance(sample, BaseDataElement) else sample


@METRICS.register_module()
class TemperatureFitMetric(BaseMetric):
    """Fit the temperature of post-hoc temperature scaling (docs/method.md §6) on the
    evaluated dataset.

    Each image's ``seg_logits`` (at the label size) and ``gt_sem_seg`` feed a
    :class:`~mmcals.calibration.temperature.PixelSample` of at most ``max_pixels`` valid
    pixels, keyed by the image's ``img_path``. A rank keeps its running sample plus its
    latest image apart, because that one may be the sampler's padding (a repeat mmengine
    drops by position); the per-rank samples are collected by mmengine and merged on rank 0
    into exactly the sample one process would draw, which the temperature is then fitted to
    in float64 (:func:`fit_temperature`, or :func:`fit_class_temperatures` with
    ``per_class``). mmengine broadcasts the result to every rank.

    Returned metrics: ``temperature`` (a float, or a list with one per class),
    ``nll_before`` and ``nll_after`` (mean NLL of the sample, not in percent),
    ``pixels_seen``, ``pixels_used``, ``at_search_bound``; with ``per_class`` also
    ``scalar_temperature`` (the single T the per-class fit starts from),
    ``classes_at_bound`` and ``classes_without_pixels`` (class names). Without a valid pixel
    ``temperature`` is NaN and ``pixels_used`` 0 (every rank can see it and stop).

    Args:
        max_pixels (int): Most pixels in the sample (memory: this x classes x 4 bytes, times
            the number of ranks on rank 0 while merging). Default: 1000000.
        per_class (bool): One temperature per class. Default: False.
        ignore_index (int): Label of pixels left out. Default: 255.
        seed (int): Seed of the sample. Default: 0.
        split (str, optional): Name of the split, for the log. Default: None.
        collect_device (str): Device used to collect results across ranks. Default: 'cpu'.
        prefix (str, optional): Prefix of the metric names. Default: None.
    """

    def __init__(self,
                 max_pixels: int = 1_000_000,
                 per_class: bool = False,
                 ignore_index: int = 255,
                 seed: int = 0,
                 split: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, **kwargs)
        PixelSample(max_pixels)  # the cap's check, where the value enters
        self.max_pixels = max_pixels
        self.per_class = bool(per_class)
        self.ignore_index = ignore_index
        self.seed = seed
        self.split = split
        self._reset_stream()

    def _new_sample(self) -> PixelSample:
        return PixelSample(self.max_pixels, self.ignore_index, self.seed)

    def _reset_stream(self) -> None:
        self._running = self._new_sample()
        self._latest: Optional[PixelSample] = None
        self._num_samples = 0

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Offer each sample's valid pixels (``seg_logits``, ``gt_sem_seg``) to the sample."""
        for sample in data_samples:
            sample = _as_dict(sample)
            for field, need in (('seg_logits', "the model's predict() must return the "
                                               'per-class logits as SegDataSample.seg_logits'),
                                ('gt_sem_seg', 'the pipeline must load annotations '
                                               '(LoadAnnotations)')):
                if field not in sample:
                    raise KeyError(f'TemperatureFitMetric needs {field} in every data sample: '
                                   f'{need}; got fields {sorted(sample)}')
            logits = sample['seg_logits']['data']
            if self._num_samples == 0:
                self._class_names(logits.shape[0])  # fail at the first image on a mismatch
            image = self._new_sample()
            name = str(sample.get('img_path', f'image {self._num_samples}'))
            image.add(logits, sample['gt_sem_seg']['data'], name)
            if self._latest is not None:
                self._running.merge(self._latest)
            self._latest = image
            self._num_samples += 1

    def evaluate(self, size: int) -> dict:
        """Drop this rank's padding, then collect and compute as mmengine does.

        mmengine's samplers give rank ``r`` the samples at positions ``r, r + W, ...`` and pad
        the last row with repeats; ``collect_results`` keeps positions ``< size``. Only this
        rank's latest sample can be such padding, which is why it is kept apart. Every rank
        hands over exactly one sample (maybe empty), so that rank positions line up.
        """
        rank, world_size = get_dist_info()
        if self._latest is not None:
            if (self._num_samples - 2) * world_size + rank >= size:
                self._reset_stream()
                raise ValueError(
                    f'rank {rank} processed {self._num_samples} samples but evaluate(size='
                    f'{size}) with {world_size} process(es) allows at most one padded sample '
                    'per rank: size must be the length of the evaluated dataset')
            if (self._num_samples - 1) * world_size + rank < size:
                self._running.merge(self._latest)
        self.results = [self._running]
        self._reset_stream()
        return super().evaluate(size)

    def compute_metrics(self, results: list) -> dict:
        """Merge the per-rank samples, fit, log, return the temperature(s)."""
        merged = self._new_sample()
        for part in results:
            merged.merge(part)
        if len(merged) == 0:
            print_log('TemperatureFitMetric: no valid pixel to fit the temperature on (every '
                      f'label is ignore_index={self.ignore_index}, or no image)',
                      logger='current', level=logging.WARNING)
            return {'temperature': float('nan'), 'pixels_seen': merged.seen, 'pixels_used': 0}
        logits, labels = merged.pixels()
        scalar, at_bound = fit_temperature(logits, labels)
        metrics = {'temperature': scalar}
        if self.per_class:
            names = self._class_names(logits.shape[1])
            fitted = fit_class_temperatures(logits, labels, start=scalar)
            metrics = {
                'temperature': fitted['temperatures'],
                'scalar_temperature': scalar,
                'classes_at_bound': [names[k] for k in fitted['at_bound']],
                'classes_without_pixels': [names[k] for k in fitted['without_pixels']],
            }
            at_bound = at_bound or bool(fitted['at_bound'])
        metrics.update(nll_before=nll(logits, labels, 1.0),
                       nll_after=nll(logits, labels, metrics['temperature']),
                       pixels_seen=merged.seen, pixels_used=len(labels),
                       at_search_bound=at_bound)
        where = f' on the {self.split} split' if self.split else ''
        shown = (f'{scalar:.4f}' if not self.per_class else
                 f'per class {min(metrics["temperature"]):.4f}..'
                 f'{max(metrics["temperature"]):.4f} (single T {scalar:.4f})')
        print_log(f'TemperatureFitMetric: T = {shown} fitted{where} on {len(labels)} of '
                  f'{merged.seen} valid pixels; NLL {metrics["nll_before"]:.4f} -> '
                  f'{metrics["nll_after"]:.4f}', logger='current')
        return metrics

    def _class_names(self, num_classes: int) -> list:
        return class_names(self.dataset_meta, num_classes)


@METRICS.register_module()
class UncalibratedCalibrationMetric(PixelCalibrationMetric):
    """:class:`~mmcals.evaluation.PixelCalibrationMetric` of the logits before temperature
    scaling: reads ``seg_logits_uncalibrated``, which a ``TemperatureScaledSegmentor`` with
    ``keep_uncalibrated=True`` adds to each sample. Same arguments; its files go to
    ``calibration_uncalibrated/`` beside the log file unless ``out_dir`` is given, so that
    they never pass for the scaled model's ``calibration.json``, and its reliability diagram
    goes to the visualizer as ``reliability_diagram_uncalibrated``.
    """

    visualizer_image = 'reliability_diagram_uncalibrated'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        renamed = []
        for sample in data_samples:
            sample = dict(_as_dict(sample))
            if UNCALIBRATED_FIELD not in sample:
                raise KeyError(f'UncalibratedCalibrationMetric needs {UNCALIBRATED_FIELD} in '
                               f"every data sample: use model type='{SCALED_TYPE}' with "
                               'keep_uncalibrated=True')
            sample['seg_logits'] = sample[UNCALIBRATED_FIELD]
            renamed.append(sample)
        super().process(data_batch, renamed)

    def _output_dir(self) -> Optional[str]:
        if self.out_dir is not None:
            return self.out_dir
        log_file = MMLogger.get_current_instance().log_file
        return None if log_file is None else osp.join(osp.dirname(log_file),
                                                      'calibration_uncalibrated')


# The two test runs ----------------------------------------------------------------------
def _type_name(entry) -> str:
    kind = entry.get('type', '') if isinstance(entry, dict) else ''
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')


def ignore_index_of(cfg) -> int:
    head = cfg.get('model', {}).get('decode_head')
    if isinstance(head, list):  # cascade heads: the last one predicts
        head = head[-1]
    return int(head.get('ignore_index', 255)) if isinstance(head, dict) else 255


def check_scalable(cfg, config_path: str) -> str:
    """The segmentor type of ``cfg.model``; a UsageError if it cannot be wrapped."""
    kind = cfg.get('model', {}).get('type')
    if _type_name(cfg.model) == SCALED_TYPE:
        raise UsageError(f'{config_path} is already temperature-scaled (its model type is '
                         f'{SCALED_TYPE}): fit on the config it inherits instead')
    if not isinstance(kind, str):
        raise UsageError(f'{config_path}: model.type must name a registered segmentor, got '
                         f'{kind!r}')
    return kind


def scaled_model_config(model_cfg: dict, temperature, keep_uncalibrated: bool = False) -> dict:
    """``model_cfg`` as a ``TemperatureScaledSegmentor`` with ``temperature``."""
    model = copy.deepcopy(model_cfg)
    model['segmentor_type'] = model['type']
    model['type'] = SCALED_TYPE
    model['temperature'] = temperature
    if keep_uncalibrated:
        model['keep_uncalibrated'] = True
    return model


def loader_config(cfg, split: str) -> dict:
    """The dataloader config of a split. ``train`` is read without augmentation: the test
    pipeline, no shuffling, one image per batch, each image once."""
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


def image_list(loader: dict) -> list:
    """The images a dataloader config reads: each sample's ``img_path`` (resolved), in order.

    The dataset is built (its file list read) but no image is loaded. A sample without an
    ``img_path`` is identified by its whole data info.
    """
    from mmseg.registry import DATASETS
    dataset = DATASETS.build(copy.deepcopy(loader['dataset']))
    images = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        path = info.get('img_path') if isinstance(info, dict) else None
        images.append(osp.realpath(path) if isinstance(path, str) else repr(info))
    return images


def check_disjoint_images(fit_split: str, fit_images: list, eval_split: str,
                          eval_images: list) -> None:
    """Refuse (one line) a fit split and an eval split that share an image."""
    shared = set(fit_images) & set(eval_images)
    if not shared:
        return
    example = next(image for image in eval_images if image in shared)
    raise UsageError(
        f'the fit split ({fit_split}_dataloader, {len(fit_images)} images) and the eval split '
        f'({eval_split}_dataloader, {len(eval_images)} images) share {len(shared)} images '
        f'(e.g. {example}): fitted and reported on the same images, the "after" numbers would '
        f'be optimistic; point one of them at other images with --cfg-options '
        f'{eval_split}_dataloader.dataset.data_root=... (or ann_file, data_prefix), as '
        "tools/experiments/camvid_study.sh does (the shipped configs' test_dataloader is "
        'their val_dataloader)')


def _own_run(run: Config, work_dir: str, name: str) -> Config:
    """Logs in ``work_dir`` under ``name``, with a visualizer of the run's own (a config's
    fixed visualizer name would hand the second run of this process the first one's)."""
    run.work_dir = work_dir
    run.experiment_name = name
    if isinstance(run.get('visualizer'), dict):
        visualizer = dict(run.visualizer)
        visualizer.pop('name', None)  # the runner names it after the experiment
        run.visualizer = visualizer
    return run


def configure_fit(cfg: Config, loader: dict, split: str, max_pixels: int, seed: int,
                  per_class: bool) -> Config:
    """The test run that fits the temperature: ``loader`` through the unscaled model, with
    :class:`TemperatureFitMetric` as the only evaluator, logs in ``<work_dir>/fit``."""
    fit = copy.deepcopy(cfg)
    fit.test_dataloader = loader
    fit.test_evaluator = dict(type='TemperatureFitMetric', max_pixels=max_pixels,
                              per_class=per_class, ignore_index=ignore_index_of(cfg),
                              seed=seed, split=split)
    fit.test_cfg = dict(type='TestLoop')
    return _own_run(fit, osp.join(cfg.work_dir, 'fit'), 'temperature_fit')


def configure_evaluation(cfg: Config, loader: dict, temperature,
                         num_bins: Optional[int]) -> Config:
    """The test run that evaluates the scaled model on ``loader``, logs in ``<work_dir>/eval``.

    The model is the one ``<config>_ts.py`` builds, plus ``keep_uncalibrated``. The
    evaluators are the config's ``test_evaluator`` (what ``tools/test.py`` runs; an
    ``IoUMetric`` and a ``PixelCalibrationMetric`` are added when missing), with
    ``num_bins`` (when given) on the ``PixelCalibrationMetric``, and before them an
    :class:`UncalibratedCalibrationMetric` with the same settings for the "before" numbers.
    Both calibration metrics write into the run's log folder.
    """
    evaluation = copy.deepcopy(cfg)
    evaluation.model = scaled_model_config(cfg.model, temperature, keep_uncalibrated=True)
    evaluation.test_dataloader = loader
    evaluators = cfg.get('test_evaluator') or []
    evaluators = [dict(e) for e in (evaluators if isinstance(evaluators, (list, tuple))
                                    else [evaluators])]
    ignore_index = ignore_index_of(cfg)
    if not any(_type_name(e) == 'IoUMetric' for e in evaluators):
        evaluators.append(dict(type='IoUMetric', iou_metrics=['mIoU'],
                               ignore_index=ignore_index))
    calibration = [e for e in evaluators if _type_name(e) == 'PixelCalibrationMetric']
    if not calibration:
        calibration = [dict(type='PixelCalibrationMetric', ignore_index=ignore_index)]
        evaluators.append(calibration[0])
    if len(calibration) > 1:
        raise UsageError('test_evaluator holds several PixelCalibrationMetric: keep one for '
                         'temperature scaling')
    after = calibration[0]
    after['out_dir'] = None
    if num_bins is not None:
        after['num_bins'] = num_bins
    before = dict(after, type='UncalibratedCalibrationMetric', prefix=UNCALIBRATED_PREFIX)
    evaluation.test_evaluator = [before] + evaluators
    evaluation.test_cfg = dict(type='TestLoop')
    return _own_run(evaluation, osp.join(cfg.work_dir, 'eval'), 'temperature_eval')


def miou_of(metrics: dict) -> Optional[float]:
    """The mIoU of a test run's metrics (IoUMetric's key, maybe prefixed)."""
    for key, value in metrics.items():
        if key == 'mIoU' or key.endswith('/mIoU'):
            return None if value is None or math.isnan(value) else float(value)
    return None


# Outputs ---------------------------------------------------------------------------------
def _atomic_write(path: str, text: str) -> None:
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix='.' + osp.basename(path), suffix='.tmp',
                                         dir=folder)
    try:
        with os.fdopen(handle, 'w') as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def scaled_config_text(config_path: str, segmentor_type: str, temperature,
                       fitted_on: str) -> str:
    """``<config>_ts.py``: ``config_path`` as ``_base_``, its model temperature-scaled."""
    if isinstance(temperature, (list, tuple)):
        values = textwrap.fill(', '.join(repr(float(t)) for t in temperature), width=88,
                               initial_indent=' ' * 8, subsequent_indent=' ' * 8)
        value = f'[\n{values}\n    ]'
        what = 'one temperature per class'
    else:
        value, what = repr(float(temperature)), 'the temperature'
    return (
        '# Written by tools/analysis/temperature_scaling.py: the config below with its model\'s\n'
        f'# seg_logits divided by {what} (docs/method.md §6), fitted on\n'
        f'# {fitted_on}.\n'
        '# Test it with the same checkpoint and --cfg-options as the fit:\n'
        '#   python tools/test.py THIS_FILE CHECKPOINT --cfg-options ...\n'
        f'_base_ = {osp.abspath(config_path)!r}\n'
        'model = dict(\n'
        f'    type={SCALED_TYPE!r},\n'
        f'    segmentor_type={segmentor_type!r},\n'
        f'    temperature={value})\n')


def write_scaled_config(path: str, config_path: str, segmentor_type: str, temperature,
                        fitted_on: str) -> str:
    """Write :func:`scaled_config_text` to ``path`` (replaced whole); returns ``path``."""
    _atomic_write(path, scaled_config_text(config_path, segmentor_type, temperature, fitted_on))
    return path


def format_table(result: dict) -> str:
    """The metrics before and after scaling, as a markdown table with a heading."""
    before = result['eval']['before']['metrics']
    after = result['eval']['after']['metrics']

    def cell(value):
        return '-' if value is None else f'{value:.2f}'

    fit, evaluation = result['fit'], result['eval']
    temperature = result['temperature']
    if isinstance(temperature, list):
        shown = f'per-class temperatures {min(temperature):.4f}..{max(temperature):.4f}'
    else:
        shown = f'temperature {temperature:.4f}'
    heading = (f"{shown} fitted on {fit['split']} ({fit['pixels_used']} of "
               f"{fit['pixels_seen']} valid pixels); metrics in percent on "
               f"{evaluation['split']} ({evaluation['before']['num_pixels']} pixels), mIoU "
               f"{cell(evaluation['mIoU'])}")
    lines = [heading, '| metric | before | after |', '| --- | ---: | ---: |']
    lines += [f'| {name} | {cell(before.get(name))} | {cell(after.get(name))} |'
              for name in METRIC_KEYS]
    return '\n'.join(lines)
