"""Evaluate a checkpoint with the config's test evaluators (mIoU and calibration metrics).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show] [--show-dir DIR]
                         [--trust-checkpoint] [--allow-partial] [--log-level LEVEL]
                         [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

The checkpoint is read without running code from it (``--trust-checkpoint`` allows that for
a file you trust) and must fit the model exactly (``--allow-partial`` loads what fits).
"""
import argparse

import mmcals  # noqa: F401  (registers mmcals' modules, enables mmcals::)
from mmcals import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save images with predictions drawn on them here')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between --show')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    cli.add_common_arguments(parser)
    return parser.parse_args(argv)


def enable_visualization(cfg, args) -> None:
    hooks = cfg.setdefault('default_hooks', {})
    if 'visualization' not in hooks:
        raise cli.UsageError('--show/--show-dir need default_hooks.visualization '
                             "(dict(type='SegVisualizationHook')) in the config")
    hook = hooks['visualization']
    hook['draw'] = True
    hook.setdefault('interval', 1)  # mmseg's default draws one image in 50
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir


def main():
    args = parse_args()
    cfg = cli.load_test_config(args, script='test')
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
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
