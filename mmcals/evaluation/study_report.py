"""The logic of ``tools/experiments/camvid_report.py``: the CamVid study's tables and figures
from the small per-run results that ``tools/experiments/camvid_study.sh`` commits. The
command line is documented there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import sys

from ..cli import UsageError
from . import comparison
from .lambda_table import class_pixel_shares

# (name in the tables, folder prefix of its runs): the study's methods, in table order.
METHODS = (
    ('CE', 'ce'), ('CE+TS', 'ce_ts'), ('LS', 'ls'), ('MbLS', 'mbls'), ('FL', 'focal'),
    ('ECP', 'ecp'), ('CALS-m10', 'cals_m10'), ('CALS-chosen', 'cals_chosen'),
    ('CALS-train-m10', 'cals_train_m10'),
)
HEAD = 'decode_head'
# Methods the study runs for every seed; the others run for the first seed only.
EVERY_SEED = ('ce', 'ce_ts', 'cals_m10', 'cals_chosen')


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def _scalars(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def find_runs(results: str, seeds: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``[(method name, run folder)]`` of the finished runs, and the names of missing ones."""
    found, missing = [], []
    for name, prefix in METHODS:
        for seed in seeds:
            run = f'{prefix}_s{seed}'
            folder = osp.join(results, run)
            if osp.isfile(osp.join(folder, 'wall_time.json')):
                found.append((name, folder))
            elif prefix in EVERY_SEED or seed == seeds[0] or osp.isdir(folder):
                missing.append(run)
    return found, missing


def collect_runs(found: list[tuple[str, str]]) -> list[dict]:
    """comparison.collect's runs, with mIoU from each run's ``test_metrics.json``."""
    runs = comparison.collect([folder for _, folder in found], [name for name, _ in found])
    for run in runs:
        metrics = osp.join(run['work_dir'], 'test_metrics.json')
        if osp.isfile(metrics):
            run['values']['mIoU'] = float(_load(metrics)['mIoU'])
            run['miou_source'] = metrics
    return runs


def versus_ce(methods: list[dict]) -> str:
    """Each method's difference to CE's mean per column; '≈' where it is no larger than CE's
    own seed spread (half the range), i.e. not told apart from seed noise."""
    ce = next((m for m in methods if m['name'] == 'CE'), None)
    if ce is None:
        return 'No CE run: no differences to show.\n'
    columns = comparison.COLUMNS
    lines = [f"Difference to CE's mean ({len(ce['runs'])} runs); ≈: inside CE's seed spread "
             '(|difference| ≤ half the range of the CE runs in that column).', '',
             '| method | ' + ' | '.join(columns) + ' |',
             '| --- | ' + ' | '.join('---:' for _ in columns) + ' |',
             '| CE spread | ' + ' | '.join(
                 '-' if ce['spread'][c] is None else f"± {ce['spread'][c]:.2f}"
                 for c in columns) + ' |']
    for method in methods:
        if method is ce:
            continue
        cells = []
        for column in columns:
            value, ref, spread = method['values'][column], ce['values'][column], \
                ce['spread'][column]
            if value is None or ref is None:
                cells.append('-')
                continue
            delta = value - ref
            inside = spread is not None and abs(delta) <= spread
            cells.append(f'{delta:+.2f}' + (' ≈' if inside else ''))
        lines.append(f'| {comparison.method_label(method)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def confidence(runs: list[dict]) -> str:
    """Per run: mean top-label confidence and pixel accuracy on the report split, and their
    difference, which says in which direction the run is miscalibrated (ECE does not)."""
    lines = ['Mean confidence (top-label probability) and pixel accuracy on the report split, '
             'in percent; the difference is positive for an over-confident run and negative '
             'for an under-confident one.', '',
             '| run | mean confidence | pixel accuracy | confidence − accuracy |',
             '| --- | ---: | ---: | ---: |']
    for run in runs:
        metrics = run['summary']['metrics']
        conf, acc = metrics['mean_confidence'], metrics['pixel_accuracy']
        lines.append(f"| {osp.basename(run['work_dir'])} | {conf:.2f} | {acc:.2f} | "
                     f'{conf - acc:+.2f} |')
    return '\n'.join(lines) + '\n'


def convergence(found: list[tuple[str, str]], out_dir: str) -> str:
    """CE's training loss and calibration-part mIoU/ECE against iterations: a PNG and a
    markdown table; returns the markdown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ce = [folder for name, folder in found if name == 'CE']
    if not ce:
        return 'No CE run: no convergence curve.\n'
    figure = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, 3, i) for i in (1, 2, 3)]
    table: dict = {}
    notes = []
    for folder in ce:
        run = osp.basename(folder)
        rows = _scalars(osp.join(folder, 'train_scalars.json'))
        train = [(r['iter'], r['loss']) for r in rows if 'loss' in r and 'iter' in r]
        val = [(r['step'], r['mIoU'], r['ECE']) for r in rows if 'mIoU' in r]
        axes[0].plot(*zip(*train), label=run, linewidth=0.8)
        if val:
            axes[1].plot([v[0] for v in val], [v[1] for v in val], marker='o', label=run)
            axes[2].plot([v[0] for v in val], [v[2] for v in val], marker='o', label=run)
            last_it = val[-1][0]
            tail = [v[1] for v in val if v[0] >= 0.75 * last_it]
            notes.append(f'- {run}: calibration-part mIoU {val[-1][1]:.2f} at iteration '
                         f'{last_it}; range over the last quarter (iterations ≥ '
                         f'{0.75 * last_it:g}): {max(tail) - min(tail):.2f} points')
        for step, miou, ece in val:
            table.setdefault(step, {})[run] = (miou, ece)
    for ax, title in zip(axes, ('training loss (all heads)', 'calibration-part mIoU %',
                                'calibration-part ECE %')):
        ax.set_title(title)
        ax.set_xlabel('iteration')
        ax.legend()
    axes[0].set_yscale('log')
    figure.tight_layout()
    figure.savefig(osp.join(out_dir, 'convergence.png'), format='png')
    runs = [osp.basename(f) for f in ce]
    lines = ['Calibration-part mIoU / ECE (%) of the CE runs at each validation.', '',
             '| iteration | ' + ' | '.join(runs) + ' |',
             '| ---: | ' + ' | '.join('---:' for _ in runs) + ' |']
    for step in sorted(table):
        lines.append(f'| {step} | ' + ' | '.join(
            f'{table[step][r][0]:.2f} / {table[step][r][1]:.2f}' if r in table[step] else '-'
            for r in runs) + ' |')
    return '\n'.join(lines + [''] + notes) + '\n'


def _histories(found: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    out = []
    for name, folder in found:
        path = osp.join(folder, 'cals_history.json')
        if name.startswith('CALS') and osp.isfile(path):
            out.append((osp.basename(folder), _load(path)))
    return out


def lambda_table(histories: list[tuple[str, dict]], camvid_root: str | None,
                 exclude: list[str]) -> str:
    """Final λ and acting share per class of every CALS run, next to the class pixel shares
    of the training part (when CamVid is at ``camvid_root``)."""
    if not histories:
        return 'No CALS run.\n'
    classes = histories[0][1]['classes']
    shares = None
    note = ''
    if camvid_root and osp.isfile(osp.join(camvid_root, 'train.txt')):
        shares, images = class_pixel_shares(camvid_root, 'train.txt', exclude, len(classes))
        note = (f'Pixel share: of the labelled pixels of the {images} training images '
                f'(train.txt without {", ".join(exclude)}). ')
    else:
        note = 'Pixel shares left out: CamVid not found at --camvid-root. '
    names = [run for run, _ in histories]
    lines = [note + "Per run: λ after the last update / the share of (pixel, k ≠ winner) pairs "
             'of class k on which the penalty acted at that update (%).', '',
             '| class | pixel share % | ' + ' | '.join(names) + ' |',
             '| --- | ---: | ' + ' | '.join('---:' for _ in names) + ' |']
    for k, cls in enumerate(classes):
        cells = []
        for _, history in histories:
            last = history['losses'][HEAD][-1]
            acting = last.get('acting_share', [None] * len(classes))[k]
            acting = '-' if acting is None else f'{100 * acting:.2f}'  # None: no pairs
            cells.append(f"{last['lambda'][k]:.3g} / {acting}")
        share = '-' if shares is None else f'{shares[k]:.2f}'
        lines.append(f'| {cls} | {share} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    for run, history in histories:
        entries = history['losses'][HEAD]
        last = entries[-1]
        margin = history.get('margin')
        pooled = [e['all'] for e in entries if 'all' in e]
        acting = ', '.join(f"{100 * p['acting_share']:.1f}" for p in pooled)
        lines.append(f"- {run}: source {history['source']}, {last['update']} updates"
                     + (f', margin {margin:g}' if margin is not None else '')
                     + f"; pooled acting share (%) per update: {acting}; gap p50/p90/p99 at "
                     f"the last update: {last['all']['gap_p50']:.3g}/{last['all']['gap_p90']:.3g}"
                     f"/{last['all']['gap_p99']:.3g}" if pooled else f'- {run}: no updates')
    return '\n'.join(lines) + '\n'


def diagnostics_png(histories: list[tuple[str, dict]], path: str) -> None:
    """λ (top) and the acting share (bottom) per class over the updates, one column per run
    (the first seed of each CALS variant)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = {}
    for run, history in histories:
        chosen.setdefault(run.rsplit('_s', 1)[0], (run, history))
    columns = list(chosen.values())
    if not columns:
        return
    figure = Figure(figsize=(4.2 * len(columns), 6.4), dpi=100)
    FigureCanvasAgg(figure)
    for i, (run, history) in enumerate(columns):
        entries = [e for e in history['losses'][HEAD] if 'acting_share' in e]
        if not entries:
            continue
        top = figure.add_subplot(2, len(columns), i + 1)
        bottom = figure.add_subplot(2, len(columns), len(columns) + i + 1)
        iters = [e['iter'] for e in entries]
        for k, cls in enumerate(history['classes']):
            top.plot(iters, [e['lambda'][k] for e in entries], marker='.', label=cls)
            bottom.plot(iters, [math.nan if e['acting_share'][k] is None
                                else 100 * e['acting_share'][k] for e in entries],
                        marker='.', label=cls)
        top.set_yscale('log')
        top.set_title(f'{run}: λ per class')
        bottom.set_title(f'{run}: acting share %')
        bottom.set_xlabel('iteration')
        if i == 0:
            bottom.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, format='png')


def wall_times(found: list[tuple[str, str]]) -> str:
    """One row per run; a run stopped and resumed (``segments`` in its wall_time.json) says
    from which iterations, its time being the sum of its segments; and the machine it ran on
    where the study recorded it (runs on different machines do not compare)."""
    lines = ['| run | wall time (min) | resumed at iteration | machine |',
             '| --- | ---: | --- | --- |']
    total = 0.0
    for _, folder in found:
        data = _load(osp.join(folder, 'wall_time.json'))
        seconds = data.get('train_and_test_seconds', data.get('fit_and_test_seconds'))
        total += seconds
        resumed = ', '.join(str(s['from_iter']) for s in data.get('segments', [])[1:])
        machine = data.get('machine', 'not recorded')
        lines.append(f'| {osp.basename(folder)} | {seconds / 60:.1f} | {resumed} | {machine} |')
    lines.append(f'| all (run two at a time) | {total / 60:.1f} | | |')
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Tables and figures of the CamVid study')
    parser.add_argument('results', help='folder of per-run results (docs/results/camvid)')
    parser.add_argument('--seeds', nargs='+', default=['0', '1', '2'])
    parser.add_argument('--camvid-root', default=os.environ.get('CAMVID_ROOT', 'data/camvid'))
    parser.add_argument('--exclude-sequences', nargs='*', default=['0006R0'])
    parser.add_argument('--out-dir', help='default: RESULTS/report')
    return parser.parse_args(argv)


def _write(path: str, text: str) -> None:
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not osp.isdir(args.results):
        raise UsageError(f'{args.results} does not exist: pass the folder the study wrote '
                         '(RESULTS of tools/experiments/camvid_study.sh)')
    found, missing = find_runs(args.results, args.seeds)
    if not found:
        raise UsageError(f'{args.results} holds no finished run (<method>_s<seed>/'
                         'wall_time.json)')
    out = args.out_dir or osp.join(args.results, 'report')
    os.makedirs(out, exist_ok=True)
    runs = collect_runs(found)
    methods = comparison.group_runs(runs)
    comparison.write_markdown(runs, methods, osp.join(out, 'comparison.md'))
    comparison.write_reliability_png(methods, osp.join(out, 'reliability_comparison.png'))
    per_run = [dict(run, name=osp.basename(run['work_dir'])) for run in runs]
    comparison.write_markdown(per_run, comparison.group_runs(per_run),
                              osp.join(out, 'comparison_runs.md'))
    _write(osp.join(out, 'versus_ce.md'), versus_ce(methods))
    _write(osp.join(out, 'confidence.md'), confidence(runs))
    _write(osp.join(out, 'convergence.md'), convergence(found, out))
    histories = _histories(found)
    margin_file = osp.join(args.results, 'margin', 'margin.json')
    chosen = _load(margin_file)['margin'] if osp.isfile(margin_file) else None
    for run, history in histories:
        history['margin'] = chosen if run.startswith('cals_chosen') else 10.0
    _write(osp.join(out, 'lambda_table.md'),
           lambda_table(histories, args.camvid_root, args.exclude_sequences))
    diagnostics_png(histories, osp.join(out, 'cals_diagnostics.png'))
    _write(osp.join(out, 'wall_times.md'), wall_times(found))
    print(comparison.format_table(methods))
    print()
    print(versus_ce(methods))
    if missing:
        print(f'not finished (left out): {", ".join(missing)}', file=sys.stderr)
    print(f'written to {out}')
