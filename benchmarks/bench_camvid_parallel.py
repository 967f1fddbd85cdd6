"""How to spend 2 cores on the CamVid study: one run with 2 threads, or two 1-thread runs at once.

    CAMVID_ROOT=/data/camvid python benchmarks/bench_camvid_parallel.py [--iters 80] [--threads 2]

Trains the study's CE model (configs/fast_scnn-ce_1xb8-4k_camvid-128x128.py, batch 8 of
128x128, one data worker, no validation) for ``--iters`` iterations, first as one process with
``--threads`` OpenMP threads, then as ``--threads`` processes of one thread each started
together. Each run's seconds per iteration are the median of mmengine's logged iteration times
after the first two logs (start-up and the first batches left out). Prints the training
throughput (iterations per second, all processes together) of both ways and their ratio,
``parallel single-thread runs / one multi-thread run``: above 1, the study's default (JOBS=2,
OMP_NUM_THREADS=1) is the faster use of the machine. Run it on an otherwise idle machine.
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'fast_scnn-ce_1xb8-4k_camvid-128x128.py')
LOG_INTERVAL = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=80,
                        help=f'training iterations per run (at least {4 * LOG_INTERVAL})')
    parser.add_argument('--threads', type=int, default=2,
                        help='cores to use: threads of the one run, number of parallel runs')
    parser.add_argument('--camvid-root', default=os.environ.get('CAMVID_ROOT', 'data/camvid'))
    args = parser.parse_args(argv)
    if args.iters < 4 * LOG_INTERVAL:
        parser.error(f'--iters must be at least {4 * LOG_INTERVAL} (two logged iteration times '
                     'are left out as warm-up)')
    if not osp.isdir(osp.join(args.camvid_root, 'train')):
        parser.error(f'CamVid not found at {args.camvid_root}; pass --camvid-root or set '
                     'CAMVID_ROOT (README: CamVid)')
    return args


def start(work_dir: str, iters: int, threads: int, seed: int, camvid_root: str):
    options = [f'train_cfg.max_iters={iters}', f'param_scheduler.0.end={iters}',
               f'train_cfg.val_interval={iters}', f'train_cfg.val_begin={iters + 1}',
               f'default_hooks.checkpoint.interval={iters}',
               f'default_hooks.logger.interval={LOG_INTERVAL}',
               'train_dataloader.num_workers=1', f'randomness.seed={seed}']
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CAMVID_ROOT=camvid_root)
    return subprocess.Popen([sys.executable, osp.join(REPO, 'tools', 'train.py'), CONFIG,
                             '--work-dir', work_dir, '--cfg-options', *options],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def seconds_per_iteration(work_dir: str) -> float:
    found = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    if not found:
        raise SystemExit(f'error: no scalars.json under {work_dir}: the run logged nothing')
    with open(max(found, key=osp.getmtime)) as f:
        times = [entry['time'] for entry in map(json.loads, f) if 'time' in entry]
    if len(times) < 3:
        raise SystemExit(f'error: {work_dir} logged {len(times)} iteration times; raise --iters')
    return statistics.median(times[2:])


def run_all(runs: list) -> list:
    processes = [start(*run) for run in runs]
    for process, run in zip(processes, runs):
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f'error: training in {run[0]} failed with exit code '
                             f'{process.returncode}:\n{err[-3000:]}')
    return [seconds_per_iteration(run[0]) for run in runs]


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        begin = time.time()
        (one,) = run_all([(osp.join(tmp, 'one'), args.iters, args.threads, 0, args.camvid_root)])
        parallel = run_all([(osp.join(tmp, f'par{i}'), args.iters, 1, i, args.camvid_root)
                            for i in range(args.threads)])
        wall = time.time() - begin
    one_rate = 1 / one
    parallel_rate = sum(1 / t for t in parallel)
    print(f'Fast-SCNN CE on CamVid, batch 8 of 128x128, {args.iters} iterations per run, '
          f'{args.threads} cores; load average before {load_before:.2f}, after '
          f'{os.getloadavg()[0]:.2f}; {wall:.0f} s in all')
    print(f'  one run, {args.threads} threads:        {one:.3f} s/iteration, '
          f'{one_rate:.2f} iterations/s')
    print(f'  {args.threads} runs, 1 thread each:     '
          + ', '.join(f'{t:.3f}' for t in parallel)
          + f' s/iteration, {parallel_rate:.2f} iterations/s together')
    print(f'ratio: parallel single-thread runs / one {args.threads}-thread run = '
          f'{parallel_rate / one_rate:.2f} (throughput)')


if __name__ == '__main__':
    main()
