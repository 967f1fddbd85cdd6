"""Post-hoc temperature scaling: fit on one split, write a config that applies it, report on
another split.

    python tools/analysis/temperature_scaling.py CONFIG CHECKPOINT [--fit-split val]
        [--eval-split test] [--per-class] [--max-fit-pixels 1000000] [--seed 0]
        [--num-bins N] [--device cpu|cuda] [--work-dir DIR] [--cfg-options KEY=VALUE ...]
        [--launcher none|pytorch|slurm] [--trust-checkpoint] [--log-level LEVEL]

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
divides every logit by one scalar ``T > 0`` fitted to minimise the NLL of held-out pixels
(docs/method.md §6). The prediction (argmax) and so mIoU do not change; confidences do. With
``--per-class`` each class gets its own ``T_k`` (``z_k / T_k``, vector scaling without a
bias): more freedom, and it can change predictions, so mIoU may move.

Fit: mmengine's test loop runs the model over the fit split (a progress log, ``--launcher``
for many GPUs: ``tools/dist_run.sh analysis/temperature_scaling.py GPUS CONFIG CHECKPOINT``)
with ``TemperatureFitMetric`` as the evaluator. It keeps a uniform random sample of at most
``--max-fit-pixels`` valid pixels (bottom-k keys drawn per image from ``--seed`` and the
image path: memory ``max-fit-pixels x classes`` floats whatever the split's size, and the
same sample for 1 or N processes), and minimises the NLL of that sample exactly in float64
(convex in ``1/T``). Raise the cap to use every pixel of a small split.

Apply: ``<work_dir>/<config name>_ts.py`` inherits CONFIG and makes its model a
``TemperatureScaledSegmentor`` with the fitted temperature; the checkpoint loads into it
unchanged. ``tools/test.py <config name>_ts.py CHECKPOINT`` (with the same --cfg-options) and
``mmseg.apis.init_model`` / ``inference_model`` then return the calibrated ``seg_logits``.

Eval: the test loop runs that scaled model over the eval split with the config's
``test_evaluator`` (what tools/test.py runs, ``--num-bins`` overriding its
PixelCalibrationMetric's bins), plus the same calibration metric on the logits before
scaling. The fit and eval splits must not share an image (the image lists are compared):
the shipped configs' ``test_dataloader`` is their ``val_dataloader``, so point one of them
at other images with --cfg-options, as tools/experiments/camvid_study.sh does.

Outputs in the work dir (default ``work_dirs/<config name>_ts``): ``<config name>_ts.py``,
``temperature_scaling.json`` (the temperature, the fit details, mIoU and both metric sets),
``calibration.json`` of the scaled model in the format the calibration metric writes (so
``tools/analysis/compare_calibration.py`` lists the run next to the others),
``reliability_before.png`` / ``reliability_after.png``, and the two runs' logs in ``fit/``
and ``eval/``. A table of the metrics before and after is printed. Use a work dir of its
own: compare_calibration reads the newest ``calibration.json`` below a work dir, so inside a
training work dir this one would win.
"""
import argparse
import os
import os.path as osp
import sys


def _wants_cpu(argv) -> bool:
    return any(arg == '--device=cpu' or (arg == '--device' and argv[i + 1:i + 2] == ['cpu'])
               for i, arg in enumerate(argv))


# mmengine picks its device once, when it is imported: --device cpu hides the GPUs before.
if __name__ == '__main__' and _wants_cpu(sys.argv[1:]):
    os.environ['CUDA_VISIBLE_DEVICES'] = ''

import json  # noqa: E402

import mmcals  # noqa: E402,F401  (registers modules, applies stack fixes)
from mmcals import cli  # noqa: E402
from mmcals.calibration import temperature_scaling as ts  # noqa: E402
from mmcals.calibration.scaled_segmentor import check_head  # noqa: E402
from mmcals.evaluation.plots import save_reliability_diagram  # noqa: E402
from mmcals.evaluation.results import load_calibration, save_calibration  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Fit a temperature on one split, write a config that applies it, report '
                    'calibration before/after on another split')
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--fit-split', default='val', choices=ts.SPLITS,
                        help='split whose pixels the temperature is fitted on (default: val)')
    parser.add_argument('--eval-split', default='test', choices=ts.SPLITS,
                        help='split the metrics are reported on (default: test)')
    parser.add_argument('--per-class', action='store_true',
                        help='one temperature per class (z_k / T_k); can change predictions')
    parser.add_argument('--max-fit-pixels', type=int, default=1_000_000,
                        help='most valid pixels of the fit split kept, a uniform random sample '
                             '(memory: this x classes x 4 bytes; default 1000000)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the pixel sample')
    parser.add_argument('--num-bins', type=int,
                        help="calibration bins (default: the config's PixelCalibrationMetric's, "
                             'else 15)')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        help='run on the CPU even with a GPU, or insist on CUDA (default: '
                             "mmengine's choice, CUDA when there is one)")
    cli.add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.work_dir is None:
        stem = osp.splitext(osp.basename(args.config))[0]
        args.work_dir = osp.join('work_dirs', stem + '_ts')
    return args


def check_arguments(args) -> None:
    from mmengine.device import get_device
    if args.max_fit_pixels < 1:
        raise cli.UsageError(f'--max-fit-pixels must be >= 1, got {args.max_fit_pixels}')
    if args.num_bins is not None and args.num_bins < 1:
        raise cli.UsageError(f'--num-bins must be >= 1, got {args.num_bins}')
    if args.device == 'cuda' and get_device() != 'cuda':
        raise cli.UsageError('--device cuda: no CUDA device is visible here; drop --device')
    if args.device == 'cpu' and get_device() != 'cpu':
        raise cli.UsageError('--device cpu came too late to hide the GPUs (mmengine was '
                             'imported first): set CUDA_VISIBLE_DEVICES= instead')


def fit_details(fitted: dict, args) -> dict:
    method = ('projected Newton in 1/T_k' if args.per_class
              else 'bisection on dNLL/dlogT')
    fit = {'split': args.fit_split,
           'method': f'{method}, float64, over a uniform pixel sample (bottom-k keys)',
           'max_pixels': args.max_fit_pixels, 'seed': args.seed}
    keys = ['pixels_seen', 'pixels_used', 'at_search_bound', 'nll_before', 'nll_after']
    if args.per_class:
        keys += ['scalar_temperature', 'classes_at_bound', 'classes_without_pixels']
    fit.update({key: fitted[key] for key in keys})
    return fit


def _save_png(summary: dict, path: str, title: str) -> None:
    save_reliability_diagram(summary, path + '.tmp', title)
    os.replace(path + '.tmp', path)


def write_outputs(args, work_dir: str, log_dir: str, segmentor_type: str, fitted: dict,
                  metrics: dict) -> dict:
    """Write the config, the report and the diagrams (rank 0); returns the report."""
    temperature = fitted['temperature']
    stem = osp.splitext(osp.basename(args.config))[0]
    scaled_config = ts.write_scaled_config(
        osp.join(work_dir, f'{stem}_ts.py'), args.config, segmentor_type, temperature,
        f'the {args.fit_split} split ({fitted["pixels_used"]} pixels) with '
        f'{osp.basename(args.checkpoint)}')
    evaluation = {'split': args.eval_split, 'mIoU': ts.miou_of(metrics),
                  'before': load_calibration(osp.join(log_dir, 'calibration_uncalibrated',
                                                      'calibration.json')),
                  'after': load_calibration(osp.join(log_dir, 'calibration',
                                                     'calibration.json'))}
    result = {'config': args.config, 'checkpoint': args.checkpoint,
              'temperature': temperature, 'per_class': args.per_class,
              'scaled_config': scaled_config, 'fit': fit_details(fitted, args),
              'eval': evaluation}
    for when in ('before', 'after'):
        ece = evaluation[when]['metrics']['ECE']
        title = f'{when} temperature scaling' + ('' if ece is None else f' (ECE {ece:.2f}%)')
        _save_png(evaluation[when], osp.join(work_dir, f'reliability_{when}.png'), title)
    save_calibration(evaluation['after'], osp.join(work_dir, 'calibration.json'))
    path = osp.join(work_dir, 'temperature_scaling.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)
    return result


def main(argv=None):
    from mmengine.dist import is_main_process
    from mmengine.registry import init_default_scope

    args = parse_args(argv)
    check_arguments(args)
    cfg = cli.load_test_config(args, script='analysis/temperature_scaling.py')
    segmentor_type = ts.check_scalable(cfg, args.config)
    splits = list(dict.fromkeys([args.fit_split, args.eval_split]))
    loaders = {split: ts.loader_config(cfg, split) for split in splits}
    cli.check_datasets({f'{split}_dataloader': loader for split, loader in loaders.items()},
                       [f'{split}_dataloader' for split in splits])
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    images = {split: ts.image_list(loader) for split, loader in loaders.items()}
    ts.check_disjoint_images(args.fit_split, images[args.fit_split], args.eval_split,
                             images[args.eval_split])
    trust = True if args.trust_checkpoint else None
    preloaded = cli.preload_checkpoint(args.checkpoint, trust)
    try:
        check_head(cli.check_model(cfg, preloaded, args.allow_partial))
    except ValueError as error:
        raise cli.UsageError(f'{args.config}: {error}') from None
    cli.check_work_dir(cfg.work_dir)

    def run(run_cfg) -> tuple:
        cli.add_input_checks(run_cfg, ['test_dataloader'], labels=False)
        runner = cli.build_runner(run_cfg, trust=trust, allow_partial=args.allow_partial,
                                  preloaded=preloaded)
        return runner.test(), runner.log_dir

    with cli.leave_no_run(cfg.work_dir), cli.explain_failures(cfg):
        fitted, _ = run(ts.configure_fit(cfg, loaders[args.fit_split], args.fit_split,
                                         args.max_fit_pixels, args.seed, args.per_class))
        if not fitted.get('pixels_used'):
            raise cli.UsageError(f'the {args.fit_split} split has no valid pixel to fit on '
                                 '(every label is the ignore index): choose another '
                                 '--fit-split')
        metrics, log_dir = run(ts.configure_evaluation(cfg, loaders[args.eval_split],
                                                       fitted['temperature'], args.num_bins))
        if is_main_process():
            result = write_outputs(args, cfg.work_dir, log_dir, segmentor_type, fitted,
                                   metrics)
            print(ts.format_table(result))
            if fitted['at_search_bound']:
                print('warning: a fitted temperature lies at the end of the searched range '
                      '[0.01, 100]; the fit split may be too small or perfectly separated',
                      file=sys.stderr)
            print(f'scaled model: python tools/test.py {result["scaled_config"]} '
                  f'{args.checkpoint}')
            print(f'results written to {cfg.work_dir}')
    cli.finish(distributed=args.launcher != 'none')


if __name__ == '__main__':
    cli.run_tool(main)
