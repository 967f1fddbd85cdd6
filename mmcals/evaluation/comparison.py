"""The logic of ``tools/analysis/compare_calibration.py``: the saved evaluations of several runs
side by side (a markdown table and one PNG). The command line is documented there.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp

from ..cli import UsageError
from .plots import draw_reliability_curve
from .results import COMPARED_KEYS, load_calibration

COLUMNS = ('mIoU', *COMPARED_KEYS)
HIGHER_IS_BETTER = {'mIoU'}
# --per-class: each chosen class's top-label ECE_k and class-wise CECE_k (docs/method.md §4),
# read from the per-class table of calibration.json; `--per-class` alone picks this many of
# the rarest classes.
PER_CLASS_KEYS = ('ECE', 'CECE')
DEFAULT_RAREST = 3
EXPECTED = ('<work_dir>/<timestamp>/calibration/calibration.json, written by '
            "PixelCalibrationMetric when the run is evaluated (validation or tools/test.py)")


def _files(root: str, name_test) -> list[str]:
    found = []
    for folder, _, files in os.walk(root):
        found += [osp.join(folder, f) for f in files if name_test(folder, f)]
    return found


def _newest(paths: list[str]) -> str | None:
    return max(paths, key=lambda p: (osp.getmtime(p), p)) if paths else None


def find_calibration(work_dir: str) -> str:
    if not osp.isdir(work_dir):
        raise UsageError(f'work dir {work_dir} does not exist')
    path = _newest(_files(work_dir, lambda _, f: f == 'calibration.json'))
    if path is None:
        raise UsageError(f'work dir {work_dir} has no evaluation results: expected {EXPECTED}')
    return path


def _miou_in(path: str) -> float | None:
    """The last mIoU recorded in a result file, or None."""
    name = osp.basename(path)
    try:
        with open(path) as f:
            if name == 'scalars.json':  # one JSON object per line, one line per logging step
                rows = [json.loads(line) for line in f if line.strip()]
                values = [row['mIoU'] for row in rows if 'mIoU' in row]
                return values[-1] if values else None
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if name == 'temperature_scaling.json':
        return data.get('eval', {}).get('mIoU')
    return data.get('mIoU') if isinstance(data, dict) else None


def _is_miou_source(folder: str, name: str) -> bool:
    if name in ('scalars.json', 'temperature_scaling.json'):
        return True
    return name == osp.basename(folder) + '.json' != 'calibration.json'  # test: <ts>/<ts>.json


def find_miou(work_dir: str, calibration_path: str) -> tuple[float | None, str | None]:
    """The newest mIoU of the run that wrote ``calibration_path`` (its timestamp folder), else
    the newest anywhere in the work dir. Returns ``(value, file)``."""
    run_dir = osp.dirname(calibration_path)
    if osp.basename(run_dir) == 'calibration':
        run_dir = osp.dirname(run_dir)
    for root in (run_dir, work_dir):
        candidates = sorted(_files(root, _is_miou_source),
                            key=lambda p: (osp.getmtime(p), p), reverse=True)
        for path in candidates:
            value = _miou_in(path)
            if value is not None:
                return float(value), path
    return None, None


def check_same_data(runs: list[dict]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in ('classes', 'num_pixels'):
            if run['summary'][key] != first['summary'][key]:
                raise UsageError(
                    f"runs {first['name']} and {run['name']} were evaluated on different "
                    f"datasets ({key} differ: {_describe(first['summary'], key)} in "
                    f"{first['calibration']} vs {_describe(run['summary'], key)} in "
                    f"{run['calibration']})")


def _describe(summary: dict, key: str) -> str:
    value = summary[key]
    return f'{len(value)} classes' if key == 'classes' else f'{value} pixels'


def per_class_column(key: str, class_name: str) -> str:
    """The column of a per-class value: ``'ECE_k Sky'``, ``'CECE_k Sky'``."""
    return f'{key}_k {class_name}'


def _per_class_rows(run: dict) -> list[dict]:
    rows = run['summary'].get('per_class')
    if not rows:
        raise UsageError(f"{run['calibration']} has no per-class table (per_class), which "
                         '--per-class reads: evaluate the run again with this mmcals, or drop '
                         '--per-class')
    return rows


def choose_classes(runs: list[dict], selection: list[str]) -> list[str]:
    """The class names ``--per-class`` asks for.

    ``selection``: class names; or one number ``N`` that is not a class name: the ``N``
    classes with the fewest ground-truth pixels (among those with any; ties in class
    order); or empty: the :data:`DEFAULT_RAREST` rarest. Every run must hold the same
    per-class pixel counts (the same labels).
    """
    rows = _per_class_rows(runs[0])
    for run in runs[1:]:
        if [r['pixels'] for r in _per_class_rows(run)] != [r['pixels'] for r in rows]:
            raise UsageError(f"runs {runs[0]['name']} and {run['name']} were evaluated on "
                             'different datasets (their per-class pixel counts differ: '
                             f"{runs[0]['calibration']} vs {run['calibration']})")
    names = [row['class'] for row in rows]
    count = None
    if not selection:
        count = DEFAULT_RAREST
    elif len(selection) == 1 and selection[0] not in names and selection[0].isdigit():
        count = int(selection[0])
    if count is None:
        unknown = [name for name in selection if name not in names]
        if unknown:
            raise UsageError(f'--per-class: unknown class {unknown[0]!r}; the runs\' classes '
                             f'are {", ".join(names)} (or give one number N for the N rarest)')
        return list(dict.fromkeys(selection))
    present = sorted((row['pixels'], k) for k, row in enumerate(rows) if row['pixels'] > 0)
    if not 1 <= count <= len(present):
        raise UsageError(f'--per-class {count}: choose between 1 and {len(present)} rarest '
                         'classes (the classes with ground-truth pixels)')
    return [names[k] for _, k in present[:count]]


def add_per_class(runs: list[dict], classes: list[str]) -> list[str]:
    """Add the columns ``ECE_k <class>`` and ``CECE_k <class>`` of ``classes`` to every run's
    ``values`` (None where calibration.json has none: no pixels of the class, or CECE under
    ``top_label_only``). Returns the new columns."""
    columns = []
    for name in classes:
        columns += [per_class_column(key, name) for key in PER_CLASS_KEYS]
    for run in runs:
        rows = {row['class']: row for row in _per_class_rows(run)}
        for name in classes:
            for key in PER_CLASS_KEYS:
                run['values'][per_class_column(key, name)] = rows[name].get(key)
    return columns


def _columns(rows: list[dict]) -> list[str]:
    """The columns of runs or methods: :data:`COLUMNS`, then any per-class ones."""
    return list(rows[0]['values']) if rows else list(COLUMNS)


def group_runs(runs: list[dict]) -> list[dict]:
    """One method per distinct name, in order of first appearance: ``values`` holds the mean
    over its runs and ``spread`` half their range, per column (None unless every run has the
    value), ``summary`` the runs' pooled reliability bins."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run['name'], []).append(run)
    methods = []
    for name, members in groups.items():
        values, spread = {}, {}
        for column in _columns(runs):
            found = [run['values'][column] for run in members]
            if any(value is None for value in found):
                values[column] = spread[column] = None
                continue
            values[column] = sum(found) / len(found)
            spread[column] = (max(found) - min(found)) / 2
        methods.append({'name': name, 'runs': members, 'values': values, 'spread': spread,
                        'summary': pool_reliability(members)})
    return methods


def pool_reliability(runs: list[dict]) -> dict:
    """The reliability bins of several runs merged: summed counts, count-weighted confidence
    and accuracy per bin (what one evaluation over all their pixels would give)."""
    first = runs[0]['summary']['reliability']
    for run in runs[1:]:
        reliability = run['summary']['reliability']
        if reliability['bin_lower'] != first['bin_lower']:
            raise UsageError(
                f"runs {runs[0]['calibration']} and {run['calibration']} of method "
                f"{run['name']} use different reliability bins "
                f"({len(first['bin_lower'])} vs {len(reliability['bin_lower'])}): evaluate "
                'them with the same num_bins')
    pooled = {'bin_lower': list(first['bin_lower']), 'bin_upper': list(first['bin_upper']),
              'count': [], 'confidence': [], 'accuracy': []}
    for b in range(len(first['bin_lower'])):
        bins = [run['summary']['reliability'] for run in runs]
        count = sum(rel['count'][b] for rel in bins)
        pooled['count'].append(count)
        for key in ('confidence', 'accuracy'):
            # An empty bin holds None (calibration.json's convention), and so does its pool.
            pooled[key].append(sum(rel['count'][b] * rel[key][b] for rel in bins
                                   if rel['count'][b]) / count if count else None)
    return {'reliability': pooled}


def best_marks(runs: list[dict]) -> dict:
    """Per column, the set of method indices holding the best displayed (mean) value (ties
    share it)."""
    marks = {}
    for column in _columns(runs):
        shown = [(i, round(run['values'][column], 2)) for i, run in enumerate(runs)
                 if run['values'][column] is not None]
        if not shown:
            marks[column] = set()
            continue
        pick = max if column in HIGHER_IS_BETTER else min
        best = pick(value for _, value in shown)
        marks[column] = {i for i, value in shown if value == best}
    return marks


def method_label(method: dict) -> str:
    count = len(method['runs'])
    return method['name'] if count == 1 else f"{method['name']} ({count} runs)"


def format_table(methods: list[dict]) -> str:
    """Markdown table of ``group_runs`` output: ``mean ± spread`` for methods of several
    runs, the value alone for single runs."""
    marks = best_marks(methods)
    columns = _columns(methods)
    lines = ['| method | ' + ' | '.join(columns) + ' |',
             '| --- | ' + ' | '.join('---:' for _ in columns) + ' |']
    for i, method in enumerate(methods):
        cells = []
        for column in columns:
            value = method['values'][column]
            text = '-' if value is None else f'{value:.2f}'
            if i in marks[column]:
                text = f'**{text}**'
            if value is not None and len(method['runs']) > 1:
                text += f" ± {method['spread'][column]:.2f}"
            cells.append(text)
        lines.append(f'| {method_label(method)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def notes(runs: list[dict]) -> list[str]:
    return [f"{run['name']}: no mIoU found in {run['work_dir']} (expected vis_data/scalars.json "
            'of a training run with validation, <timestamp>/<timestamp>.json of tools/test.py, '
            'or temperature_scaling.json)' for run in runs if run['values']['mIoU'] is None]


def write_markdown(runs: list[dict], methods: list[dict], path: str) -> str:
    summary = runs[0]['summary']
    intro = (f"{len(runs)} runs evaluated on the same {summary['num_pixels']} pixels "
             f"({len(summary['classes'])} classes). Metrics in percent, "
             f"{summary.get('num_bins')} bins; best of each column in bold (highest mIoU, "
             'lowest for the rest).')
    if any(len(method['runs']) > 1 for method in methods):
        intro += (' A method of several runs shows mean ± spread over its runs, the spread '
                  'being half the range, (max - min) / 2; the bold mark compares means.')
    per_class = [c[len('ECE_k '):] for c in _columns(methods) if c.startswith('ECE_k ')]
    if per_class:
        pixels = {row['class']: row['pixels'] for row in summary['per_class']}
        intro += (' Per class k (docs/method.md §4): ECE_k is the top-label ECE of the pixels '
                  'labelled k; CECE_k is class k\'s term of CECE (every pixel binned by p_k, '
                  'weighted by its share of all pixels, so CECE is their mean over classes). '
                  'Ground-truth pixels: '
                  + ', '.join(f'{name} {pixels[name]}' for name in per_class) + '.')
    lines = ['# Calibration comparison', '', intro, '', format_table(methods), '', 'Sources:',
             '']
    for run in runs:
        lines.append(f"- {run['name']}: {run['calibration']}"
                     + (f"; mIoU from {run['miou_source']}" if run['miou_source'] else ''))
    extra = notes(runs)
    if extra:
        lines += ['', 'Notes:', ''] + [f'- {note}' for note in extra]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path


def write_reliability_png(methods: list[dict], path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle='--', color='gray', label='perfect calibration')
    for method in methods:
        ece = method['values']['ECE']
        label = method_label(method) + ('' if ece is None else f', ECE {ece:.2f}%')
        draw_reliability_curve(ax, method['summary'], label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('confidence')
    ax.set_ylabel('accuracy')
    ax.set_title('Reliability curves')
    ax.legend(loc='upper left')
    figure.tight_layout()
    figure.savefig(path, format='png')
    return path


def collect(work_dirs: list[str], names: list[str] | None) -> list[dict]:
    if names is not None and len(names) != len(work_dirs):
        raise UsageError(f'--names gives {len(names)} names for {len(work_dirs)} work dirs')
    names = names or [osp.basename(osp.normpath(d)) for d in work_dirs]
    real = [osp.realpath(d) for d in work_dirs]
    repeated = sorted({d for d, r in zip(work_dirs, real) if real.count(r) > 1})
    if repeated:
        raise UsageError(f'work dir {repeated[0]} is given more than once: a run would count '
                         'twice in its method\'s mean')
    runs = []
    for work_dir, name in zip(work_dirs, names):
        calibration = find_calibration(work_dir)
        summary = load_calibration(calibration)
        miou, miou_source = find_miou(work_dir, calibration)
        values = {column: summary['metrics'].get(column) for column in COLUMNS}
        values['mIoU'] = miou
        runs.append({'name': name, 'work_dir': work_dir, 'calibration': calibration,
                     'summary': summary, 'values': values, 'miou_source': miou_source})
    check_same_data(runs)
    return runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Compare the saved calibration results of several runs')
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR', help='work dirs of runs')
    parser.add_argument('--out-dir', default=osp.join('work_dirs', 'calibration_comparison'),
                        help='where comparison.md and reliability_comparison.png go')
    parser.add_argument('--names', nargs='+', help='method names, one per work dir; work dirs '
                        'given the same name are seeds of one method, shown as mean ± spread '
                        '(default: the work dirs\' base names)')
    parser.add_argument('--per-class', nargs='*', metavar='CLASS',
                        help='add ECE_k and CECE_k columns of these classes, or of the N rarest '
                             f'with one number N (alone: the {DEFAULT_RAREST} rarest)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = collect(args.work_dirs, args.names)
    if args.per_class is not None:
        add_per_class(runs, choose_classes(runs, args.per_class))
    methods = group_runs(runs)
    os.makedirs(args.out_dir, exist_ok=True)
    markdown = write_markdown(runs, methods, osp.join(args.out_dir, 'comparison.md'))
    png = write_reliability_png(methods, osp.join(args.out_dir, 'reliability_comparison.png'))
    print(format_table(methods))
    for note in notes(runs):
        print(f'note: {note}')
    print(f'written: {markdown}, {png}')
