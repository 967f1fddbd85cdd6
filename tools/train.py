"""Train a segmentor with mmengine, the way mmseg's tools/train.py does, plus mmcals.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                                 [--vis-backend local|tensorboard ...]
                                 [--trust-checkpoint] [--allow-partial] [--log-level LEVEL]
                                 [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

On a machine without CUDA a GPU config (SyncBN, nccl) runs unchanged: the backend becomes gloo,
SyncBN becomes BN and DDP gets ``device_ids=None``; one log line says so. Checkpoints are
written atomically and read without running code from them (``--trust-checkpoint`` allows
that for a file you trust); training stops at the first non-finite loss. ``--vis-backend
tensorboard`` adds mmengine's TensorboardVisBackend (``pip install 'mmcals[tensorboard]'``).
"""
import argparse

import mmcals  # noqa: F401  (registers mmcals' modules, enables mmcals::)
from mmcals import cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
        help='resume from CHECKPOINT, or from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    cli.add_vis_backend_argument(parser)
    cli.add_common_arguments(parser)
    return parser.parse_args(argv)


def main():
    args = parse_args()
    cli.setup_logging(args.log_level)
    cli.check_launcher(args.launcher)
    cli.check_amp(args.amp)
    cfg = cli.load_config(args.config, args.cfg_options)
    cli.add_vis_backends(cfg, args.vis_backend)
    cfg.launcher = args.launcher
    cfg.log_level = args.log_level
    cfg.work_dir = cli.default_work_dir(cfg, args.config, args.work_dir)
    trust = True if args.trust_checkpoint else None

    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    checkpoint = None
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
        checkpoint = cli.resume_checkpoint(cfg.work_dir)
    elif args.resume:
        cli.check_checkpoint(args.resume, 'checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('load_from'):
        cli.check_checkpoint(cfg.load_from, 'load_from checkpoint')
        checkpoint = cfg.load_from
    loaders = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') else [])
    cli.check_datasets(cfg, loaders)
    cli.check_hooks(cfg)
    preloaded = cli.preload_checkpoint(checkpoint, trust) if checkpoint else {}
    cli.check_model(cfg, preloaded, args.allow_partial)
    cli.check_work_dir(cfg.work_dir)
    cli.add_training_checks(cfg)
    cli.add_input_checks(cfg, loaders[1:], labels=False)

    with cli.leave_no_run(cfg.work_dir), cli.explain_failures(cfg):
        runner = cli.build_runner(cfg, trust=trust, allow_partial=args.allow_partial,
                                  preloaded=preloaded)
        runner.train()
    cli.finish(distributed=args.launcher != 'none')


if __name__ == '__main__':
    cli.run_tool(main)
