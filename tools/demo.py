"""The quick start: train the same small model with CE and with CALS on built-in data, compare.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters N] [--sequential]

Trains ``configs/demo_ce_synthetic.py`` and ``configs/demo_cals_synthetic.py`` through
``tools/train.py`` (mmengine's progress lines, with ETA, show as they train, prefixed with the
run's name). On a CPU machine with two or more cores the two runs train side by side, each on
half of the cores (small models use one core well and several poorly); with a GPU, or with
``--sequential``, one after the other. Then each final model's logit gaps on the validation
split are measured with ``tools/analysis/logit_gaps.py`` and the work dir receives:

- ``summary.md`` (also printed): mIoU and calibration side by side, the logit gaps of both
  models against the margin, and CALS's multipliers and constraint diagnostics over training
  (read from its ``cals_history.json``, docs/method.md §5);
- ``comparison.md`` and ``reliability_comparison.png`` (both reliability curves),
  ``ce_reliability.png``, ``cals_reliability.png``;
- ``cals_lambda_per_class.png`` (the hook's λ plot) and ``cals_diagnostics.png`` (λ, the
  violating and acting shares and the gap percentiles over the updates);
- ``ce_logit_gaps.png`` / ``cals_logit_gaps.png`` and their JSON.
"""
import argparse
import glob
import inspect
import json
import math
import os
import os.path as osp
import shutil
import subprocess
import sys
import threading
import time

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
RUNS = (('CE', 'configs/demo_ce_synthetic.py'), ('CALS', 'configs/demo_cals_synthetic.py'))
DIAGNOSTICS = ('violating_share', 'acting_share', 'gap_p50', 'gap_p90', 'gap_p99')
_print_lock = threading.Lock()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train CE and CALS on built-in data, compare')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations per run (default: the configs\' schedule)')
    parser.add_argument('--sequential', action='store_true',
                        help='train the two runs one after the other even on a multi-core CPU')
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    return args


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def newest(pattern: str) -> str:
    matches = sorted(glob.glob(pattern, recursive=True), key=osp.getmtime)
    if not matches:
        raise SystemExit(f'error: the demo expected {pattern} but it is missing')
    return matches[-1]


def start(name: str, command: list, env: dict) -> tuple:
    """Start ``command``, echoing its output line by line prefixed with ``[name]``."""
    say(f'[{name}] $ ' + ' '.join(command))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)

    def echo():
        for line in process.stdout:
            say(f'[{name}] {line.rstrip()}')

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    return process, thread


def finish_all(jobs: dict) -> dict:
    """Wait for every job; if one fails, stop the others and exit with its error.

    Returns the time each job ended (``time.time()``)."""
    failed = None
    pending = dict(jobs)
    ended = {}
    while pending:
        for name, (process, thread) in list(pending.items()):
            if process.poll() is None:
                continue
            ended[name] = time.time()
            thread.join()
            del pending[name]
            if process.returncode != 0 and failed is None:
                failed = (name, process.returncode)
                for other, _ in pending.values():
                    other.terminate()
        time.sleep(0.2)
    if failed:
        raise SystemExit(f'error: the {failed[0]} step failed with exit code {failed[1]}')
    return ended


def run_jobs(commands: dict, parallel: bool, env: dict) -> dict:
    """Run ``{name: command}`` side by side or in turn; returns each one's seconds."""
    if parallel:
        begin = time.time()
        ended = finish_all({name: start(name, command, env) for name, command in commands.items()})
        return {name: ended[name] - begin for name in commands}
    durations = {}
    for name, command in commands.items():
        begin = time.time()
        durations[name] = finish_all({name: start(name, command, env)})[name] - begin
    return durations


def render_data(data_root: str) -> None:
    """Render the demo's scenes once, before two runs could race to build the cache."""
    from mmengine.config import Config
    from mmseg.registry import DATASETS

    import mmcals  # noqa: F401  (registers SyntheticStreetsDataset)
    cfg = Config.fromfile(osp.join(REPO, RUNS[0][1]))
    for key in ('train_dataloader', 'val_dataloader'):
        DATASETS.build(dict(cfg[key].dataset, data_root=data_root, pipeline=[]))


def demo_margin() -> float:
    """The margin of the CALS run's loss (its config's, else CALSLoss's default)."""
    from mmengine.config import Config

    from mmcals.losses import CALSLoss
    cfg = Config.fromfile(osp.join(REPO, RUNS[1][1]))
    for loss in cfg.model.decode_head.loss_decode:
        if loss.get('type') == 'CALSLoss':
            return float(loss.get('margin', inspect.signature(CALSLoss).parameters[
                'margin'].default))
    raise SystemExit(f'error: {RUNS[1][1]} has no CALSLoss in its decode head')


def load_history(path: str) -> tuple:
    """(class names, the decode head's entries) of a ``cals_history.json``; the first entry
    holds the initial λ, the others one update each."""
    with open(path) as f:
        history = json.load(f)
    losses = history['losses']
    label = 'decode_head' if 'decode_head' in losses else next(iter(losses))
    return history['classes'], losses[label]


def check_diagnostics(updates: list, path: str) -> None:
    missing = [key for key in DIAGNOSTICS + ('all',) if not updates or key not in updates[-1]]
    if missing:
        raise SystemExit(f'error: {path} holds no multiplier update with the constraint '
                         f'diagnostics ({", ".join(missing)} missing; docs/method.md §5)')


def _fmt(value, digits=2, percent=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 'n/a'
    return f'{100 * value:.{digits}f}' if percent else f'{value:.{digits}f}'


def gap_table(gaps: dict, margin: float) -> str:
    key = f'{margin:g}'
    lines = [f'| model | gap p50 | gap p90 | gap p99 | % pairs above m={key} |',
             '| --- | ---: | ---: | ---: | ---: |']
    for name, summary in gaps.items():
        overall = summary['all']
        at = overall['gap_at_quantile']
        share = overall['share_above'].get(key)
        lines.append(f'| {name} | {_fmt(at.get("0.5"))} | {_fmt(at.get("0.9"))} | '
                     f'{_fmt(at.get("0.99"))} | {_fmt(share, percent=True)} |')
    return '\n'.join(lines)


def diagnostics_table(updates: list) -> str:
    lines = ['| iter | λ mean | λ max | % violating | % acting | gap p50 | gap p90 | gap p99 |',
             '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for entry in updates:
        lam = entry['lambda']
        pooled = entry.get('all', {})
        lines.append(
            f'| {entry["iter"]} | {sum(lam) / len(lam):.3g} | {max(lam):.3g} | '
            f'{_fmt(pooled.get("violating_share"), percent=True)} | '
            f'{_fmt(pooled.get("acting_share"), percent=True)} | '
            f'{_fmt(pooled.get("gap_p50"))} | {_fmt(pooled.get("gap_p90"))} | '
            f'{_fmt(pooled.get("gap_p99"))} |')
    return '\n'.join(lines)


def plot_diagnostics(classes: list, entries: list, margin: float, gaps: dict,
                     path: str) -> None:
    """λ per class, violating/acting shares and gap percentiles over CALS's updates."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    updates = [entry for entry in entries if entry.get('update')]
    steps = [entry['iter'] for entry in updates]
    colours = colormaps['tab10'].colors
    figure = Figure(figsize=(12, 3.4), dpi=80, constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for k, name in enumerate(classes):
        axes[0].plot([entry['iter'] for entry in entries],
                     [entry['lambda'][k] for entry in entries], marker='.',
                     color=colours[k % 10], label=name)
    axes[0].set_yscale('log')
    axes[0].set_title('CALS λ per class')
    axes[0].legend(fontsize='xx-small', ncol=2)
    for k in range(len(classes)):
        axes[1].plot(steps, [100 * entry['acting_share'][k] for entry in updates],
                     color=colours[k % 10], linewidth=0.8, alpha=0.7)
    for key, style in (('violating_share', '-'), ('acting_share', '--')):
        axes[1].plot(steps, [100 * entry['all'][key] for entry in updates], style,
                     color='black', linewidth=2, label=f'{key.split("_")[0]}, all pairs')
    axes[1].set_title(f'% of pairs beyond m={margin:g} / acted on (per class: thin)',
                      fontsize='medium')
    axes[1].legend(fontsize='x-small')
    for key, style in (('gap_p50', ':'), ('gap_p90', '--'), ('gap_p99', '-')):
        axes[2].plot(steps, [entry['all'][key] for entry in updates], style,
                     color='tab:blue', marker='.', label=f'CALS, {key[5:]}th pct')
    if 'CE' in gaps:
        at = gaps['CE']['all']['gap_at_quantile']
        for q, marker in (('0.5', 'v'), ('0.9', 's'), ('0.99', '^')):
            if at.get(q) is not None:
                axes[2].plot([steps[-1]], [at[q]], marker, color='tab:red',
                             label=f'CE final, {float(q) * 100:g}th pct')
    axes[2].axhline(margin, color='gray', linestyle='-.', label=f'margin {margin:g}')
    axes[2].set_title('logit gap percentiles (all pairs)')
    axes[2].legend(fontsize='xx-small')
    for ax in axes:
        ax.set_xlabel('iteration')
        ax.grid(True, alpha=0.3)
    figure.savefig(path, format='png')


def main():
    args = parse_args()
    started = time.time()
    import torch  # only to know whether a GPU will train the runs

    work_dir = osp.abspath(args.work_dir)
    data_root = osp.join(work_dir, 'data')
    os.makedirs(work_dir, exist_ok=True)
    render_data(data_root)
    margin = demo_margin()
    cpus = os.cpu_count() or 1
    parallel = not (args.sequential or torch.cuda.is_available() or cpus < 2)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if parallel and 'OMP_NUM_THREADS' not in os.environ:
        env['OMP_NUM_THREADS'] = str(max(1, cpus // 2))

    overrides = [f'{key}.dataset.data_root={data_root}'
                 for key in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    if args.iters:
        interval = max(1, args.iters // 8)
        overrides += [f'train_cfg.max_iters={args.iters}', f'train_cfg.val_interval={interval}',
                      f'param_scheduler.0.end={args.iters}',
                      f'default_hooks.checkpoint.interval={args.iters}',
                      f'default_hooks.logger.interval={max(1, interval // 2)}']
    run_dirs = {name: osp.join(work_dir, name.lower()) for name, _ in RUNS}
    for run_dir in run_dirs.values():
        if osp.isdir(run_dir):
            shutil.rmtree(run_dir)  # a fresh run each time: no stale results to compare
    say(f'\n=== Training CE and CALS ({"side by side" if parallel else "in turn"}) ===')
    train_start = time.time()
    durations = run_jobs({name: [sys.executable, osp.join(HERE, 'train.py'), config,
                                 '--work-dir', run_dirs[name], '--cfg-options', *overrides]
                          for name, config in RUNS}, parallel, env)
    train_time = time.time() - train_start

    say('\n=== Comparing calibration and measuring the logit gaps ===')
    gap_dirs = {name: osp.join(work_dir, f'{name.lower()}_logit_gaps') for name, _ in RUNS}
    commands = {'compare': [sys.executable, osp.join(HERE, 'analysis', 'compare_calibration.py'),
                            *run_dirs.values(), '--names', *run_dirs, '--out-dir', work_dir]}
    for name, config in RUNS:
        checkpoint = newest(osp.join(run_dirs[name], 'iter_*.pth'))
        commands[f'{name} gaps'] = [
            sys.executable, osp.join(HERE, 'analysis', 'logit_gaps.py'), config, checkpoint,
            '--split', 'val', '--margins', *(f'{m:g}' for m in (margin / 2, margin, 2 * margin)),
            '--out-dir', gap_dirs[name], '--work-dir', osp.join(gap_dirs[name], 'run'),
            '--cfg-options', *overrides]
    run_jobs(commands, parallel, env)

    for name, _ in RUNS:
        shutil.copy(newest(osp.join(run_dirs[name], '**', 'calibration',
                                    'reliability_diagram.png')),
                    osp.join(work_dir, f'{name.lower()}_reliability.png'))
        shutil.copy(osp.join(gap_dirs[name], 'logit_gaps.png'),
                    osp.join(work_dir, f'{name.lower()}_logit_gaps.png'))
    shutil.copy(newest(osp.join(run_dirs['CALS'], '**', 'cals_lambda.png')),
                osp.join(work_dir, 'cals_lambda_per_class.png'))
    gaps = {}
    for name, _ in RUNS:
        with open(osp.join(gap_dirs[name], 'logit_gaps.json')) as f:
            gaps[name] = json.load(f)
    history = osp.join(run_dirs['CALS'], 'cals_history.json')
    classes, entries = load_history(history)
    updates = [entry for entry in entries if entry.get('update')]
    check_diagnostics(updates, history)
    plot_diagnostics(classes, entries, margin, gaps, osp.join(work_dir, 'cals_diagnostics.png'))

    with open(osp.join(work_dir, 'comparison.md')) as f:
        comparison = f.read().strip()
    if comparison.startswith('# '):  # its own title; summary.md has one
        comparison = comparison.split('\n', 1)[-1].strip()
    timing = (f'Training {train_time / 60:.1f} min ('
              + ', '.join(f'{n} {d / 60:.1f} min' for n, d in durations.items())
              + f', {"side by side" if parallel else "in turn"}); the whole demo '
              f'{(time.time() - started) / 60:.1f} min (without installing the environment).')
    summary = (f'# CE vs CALS on the synthetic streets\n\n## Validation metrics (percent)\n\n'
               f'{comparison}\n\n## Logit gaps of the final models on the validation split\n\n'
               f'{gap_table(gaps, margin)}\n\n## CALS over training (margin {margin:g}, '
               f'pooled over classes)\n\n{diagnostics_table(updates)}\n\n{timing}\n')
    with open(osp.join(work_dir, 'summary.md'), 'w') as f:
        f.write(summary)
    say('\n' + summary)
    say(f'Results in {work_dir}:')
    for name in ('summary.md', 'comparison.md', 'reliability_comparison.png',
                 'ce_reliability.png', 'cals_reliability.png', 'cals_lambda_per_class.png',
                 'cals_diagnostics.png', 'ce_logit_gaps.png', 'cals_logit_gaps.png'):
        say(f'  {osp.join(work_dir, name)}')


if __name__ == '__main__':
    main()
