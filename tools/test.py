"""Evaluate a checkpoint with the config's test evaluators (mIoU and calibration metrics).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show] [--show-dir DIR]
                         [--out DIR] [--confidence-threshold C] [--trust-checkpoint]
                         [--allow-partial] [--log-level LEVEL]
                         [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

The checkpoint is read without running code from it (``--trust-checkpoint`` allows that for
a file you trust) and must fit the model exactly (``--allow-partial`` loads what fits).

``--show-dir`` also draws, per image, the confidence map and the confidently wrong pixels
(:class:`~mmcals.hooks.ConfidenceMapHook`, next to mmseg's overlays); ``--out`` writes the
per-pixel confidence and prediction of every image there. Under ``--tta`` the outputs hold one
augmentation's logits, so ``--show-dir`` then draws mmseg's overlays only and ``--out`` is
refused.
"""
import argparse
import os.path as osp

import mmcals  # noqa: F401  (registers mmcals' modules, enables mmcals::)
from mmcals import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save images with predictions drawn on them here')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between --show')
    parser.add_argument('--out', help='write per image <stem>_confidence.npy/.png (16-bit), '
                        '<stem>_pred.png and <stem>_confidently_wrong.png here')
    parser.add_argument('--confidence-threshold', type=float,
                        help='confidence from which a wrong pixel counts as confidently wrong '
                             'in the --show-dir figures and --out maps (default 0.9)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    cli.add_vis_backend_argument(parser)
    cli.add_common_arguments(parser)
    return parser.parse_args(argv)


def enable_visualization(cfg, args) -> None:
    """Turn on mmseg's SegVisualizationHook (added if the config has none) for every image."""
    hooks = dict(cfg.get('default_hooks') or {})
    hook = dict(hooks.get('visualization') or dict(type='SegVisualizationHook'))
    hook['draw'] = True
    hook.setdefault('interval', 1)  # mmseg's default draws one image in 50
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    hooks['visualization'] = hook
    cfg.default_hooks = hooks  # assigned whole: Config.setdefault copies a new value
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir


def enable_confidence_maps(cfg, args) -> None:
    """Add :class:`~mmcals.hooks.ConfidenceMapHook` for ``--show-dir`` (figures) and
    ``--out`` (maps)."""
    threshold = args.confidence_threshold
    if threshold is not None and not (args.show_dir or args.out):
        raise cli.UsageError('--confidence-threshold applies to the --show-dir figures and '
                             'the --out maps: add one of them')
    if not (args.show_dir or args.out):
        return
    if args.tta:
        # mmseg's SegTTAModel merges the predictions but keeps one augmentation's logits.
        if args.out:
            raise cli.UsageError('--out writes the confidence of the seg_logits, which --tta '
                                 'keeps for one augmentation only: drop --tta or --out')
        from mmengine.logging import MMLogger
        MMLogger.get_instance('mmcals').warning(
            '--tta: the confidence maps are not drawn (the outputs hold one augmentation\'s '
            'logits); --show-dir gets mmseg\'s overlays only')
        return
    if threshold is not None and not 0 <= threshold <= 1:
        raise cli.UsageError(f'--confidence-threshold {threshold:g} is not a confidence: '
                             'give a number in [0, 1]')
    if args.out and osp.exists(args.out) and not osp.isdir(args.out):
        raise cli.UsageError(f'--out {args.out} is a file, not a folder: choose another')
    hook = dict(type='ConfidenceMapHook', draw=bool(args.show_dir), out_dir=args.out)
    if threshold is not None:
        hook['threshold'] = threshold
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [hook]


def main():
    args = parse_args()
    cfg = cli.load_test_config(args, script='test')
    cli.add_vis_backends(cfg, args.vis_backend)
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    enable_confidence_maps(cfg, args)
    if args.tta:
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [
            cfg.test_evaluator]
        if any(e.get('type') == 'PixelCalibrationMetric' for e in evaluators):
            # mmseg's SegTTAModel merges the predictions but keeps one augmentation's logits.
            raise cli.UsageError('--tta keeps only the last augmentation\'s seg_logits, so '
                                 'PixelCalibrationMetric would not measure the merged '
                                 'prediction: drop --tta, or the metric from test_evaluator')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    cli.run_test_loop(cfg, args)


if __name__ == '__main__':
    cli.run_tool(main)
