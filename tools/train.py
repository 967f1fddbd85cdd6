"""Train a segmentor with mmengine, the way mmseg's tools/train.py does, plus mmcals.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                                 [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

On a machine without CUDA a GPU config (SyncBN, nccl) runs unchanged: the backend becomes gloo,
SyncBN becomes BN and DDP gets ``device_ids=None``; one log line says so.
"""
import argparse

import mmcals  # noqa: F401  (registers modules, applies stack fixes, enables mmcals::)
from mmcals import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
        help='resume from CHECKPOINT, or from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    cli.add_common_arguments(parser)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    cli.check_launcher(args.launcher)
    cli.check_amp(args.amp)
    cfg = cli.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = cli.default_work_dir(cfg, args.config, args.work_dir)

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cli.check_checkpoint(args.resume, 'checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('load_from'):
        cli.check_checkpoint(cfg.load_from, 'load_from checkpoint')
    loaders = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    cli.check_datasets(cfg, loaders)

    runner = cli.build_runner(cfg)
    try:
        runner.train()
    except cli.DOWNLOAD_ERRORS as error:
        raise cli.explain_download_failure(cfg, error) from error
    cli.finish(distributed=args.launcher != 'none')


if __name__ == '__main__':
    cli.run_tool(main)
