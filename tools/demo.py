"""The quick start: train the same small model with CE and with CALS on built-in data, compare.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters N]

Trains ``configs/demo_ce_synthetic.py`` and ``configs/demo_cals_synthetic.py`` one after the
other through ``tools/train.py`` (mmengine's progress lines, with ETA, show as they train),
then writes to the work dir: ``comparison.md`` (mIoU and calibration side by side),
``reliability_comparison.png`` (both reliability curves), ``ce_reliability.png``,
``cals_reliability.png`` and ``cals_lambda_per_class.png`` (CALS's multipliers over updates).
Uses the GPU when there is one, like any mmengine run.
"""
import argparse
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
RUNS = (('CE', 'configs/demo_ce_synthetic.py'), ('CALS', 'configs/demo_cals_synthetic.py'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train CE and CALS on built-in data, compare')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations per run (default: the configs\' schedule)')
    return parser.parse_args(argv)


def newest(pattern: str) -> str:
    matches = sorted(glob.glob(pattern, recursive=True), key=osp.getmtime)
    if not matches:
        raise SystemExit(f'error: the demo expected {pattern} but it is missing')
    return matches[-1]


def run(command: list) -> None:
    print('$ ' + ' '.join(command), flush=True)
    result = subprocess.run(command, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f'error: {command[1]} failed with exit code {result.returncode}')


def main():
    args = parse_args()
    work_dir = osp.abspath(args.work_dir)
    data_root = osp.join(work_dir, 'data')
    os.makedirs(work_dir, exist_ok=True)
    overrides = [f'train_dataloader.dataset.data_root={data_root}',
                 f'val_dataloader.dataset.data_root={data_root}',
                 f'test_dataloader.dataset.data_root={data_root}']
    if args.iters:
        interval = max(1, args.iters // 4)
        overrides += [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={interval}',
                      f'param_scheduler.0.end={args.iters}',
                      f'default_hooks.checkpoint.interval={args.iters}',
                      f'default_hooks.logger.interval={max(1, interval // 2)}']
    durations = {}
    for name, config in RUNS:
        run_dir = osp.join(work_dir, name.lower())
        if osp.isdir(run_dir):
            shutil.rmtree(run_dir)  # a fresh run each time: no stale results to compare
        print(f'\n=== Training with {name} ({config}) ===', flush=True)
        start = time.time()
        run([sys.executable, osp.join(HERE, 'train.py'), config, '--work-dir', run_dir,
             '--cfg-options', *overrides])
        durations[name] = time.time() - start

    run_dirs = [osp.join(work_dir, name.lower()) for name, _ in RUNS]
    run([sys.executable, osp.join(HERE, 'analysis', 'compare_calibration.py'), *run_dirs,
         '--names', *[name for name, _ in RUNS], '--out-dir', work_dir])
    for name, _ in RUNS:
        run_dir = osp.join(work_dir, name.lower())
        shutil.copy(newest(osp.join(run_dir, '**', 'calibration', 'reliability_diagram.png')),
                    osp.join(work_dir, f'{name.lower()}_reliability.png'))
    shutil.copy(newest(osp.join(work_dir, 'cals', '**', 'cals_lambda.png')),
                osp.join(work_dir, 'cals_lambda_per_class.png'))

    print('\nTraining time: ' + ', '.join(f'{n} {d / 60:.1f} min' for n, d in durations.items()))
    print(f'Results in {work_dir}:')
    for name in ('comparison.md', 'reliability_comparison.png', 'ce_reliability.png',
                 'cals_reliability.png', 'cals_lambda_per_class.png'):
        print(f'  {osp.join(work_dir, name)}')


if __name__ == '__main__':
    main()
