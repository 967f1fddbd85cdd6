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

The fit and the evaluation live in :mod:`mmcals.evaluation.temperature_scaling`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import sys

import torch
from mmengine.config import DictAction

import mmcals  # noqa: F401  (registers modules, applies stack fixes)
from mmcals import cli
from mmcals.evaluation.plots import save_reliability_diagram
from mmcals.evaluation.results import save_calibration
from mmcals.evaluation.temperature_scaling import (
    SPLITS,
    PixelSample,
    evaluate,
    fit_temperature,
    format_table,
    loader_config,
    nll,
    predictions,
)


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


def build_model(cfg, checkpoint: str, device: str):
    from mmengine.model.utils import revert_sync_batchnorm
    from mmseg.registry import MODELS

    from mmcals.checkpoint import fit_to_model, load_checkpoint_safely

    model_cfg = copy.deepcopy(cfg.model)
    model_cfg['pretrained'] = None
    model_cfg['train_cfg'] = None
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'].pop('init_cfg', None)
    model = MODELS.build(model_cfg)
    # The tools' safe loading: weights_only unpickling (MMCALS_TRUST_CHECKPOINTS=1 opts out),
    # and a one-line error for a checkpoint that does not fit the model.
    state = load_checkpoint_safely(checkpoint, map_location='cpu')
    model.load_state_dict(fit_to_model(model, state, checkpoint, allow_partial=False))
    return revert_sync_batchnorm(model).to(device).eval()


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
    save_calibration(evaluation['after'], osp.join(work_dir, 'calibration.json'))
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
