"""tools/analysis/compare_calibration.py on hand-made work dirs."""
import json
import os
import os.path as osp

import pytest
import torch
from tooling import run_tool

from mmcals.evaluation import comparison
from mmcals.evaluation.calibration_stats import CalibrationStats

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis', 'compare_calibration.py')
CLASSES = ['road', 'car', 'sky']
COLUMNS = ['mIoU', 'ECE', 'aECE', 'CECE', 'NLL', 'Brier']


def _summary(sharpness, seed=0, pixels=3000, classes=CLASSES):
    """A real calibration.json dict: random logits of one sharpness through CalibrationStats."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(classes), (1, pixels), generator=gen)
    logits = torch.randn(len(classes), 1, pixels, generator=gen)
    logits += 1.5 * torch.nn.functional.one_hot(labels[0], len(classes)).t()[:, None]
    stats = CalibrationStats(len(classes))
    stats.update(sharpness * logits, labels)
    return stats.summary(classes)


def _write(path, data, mtime=None, lines=False):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        if lines:
            f.write(''.join(json.dumps(row) + '\n' for row in data))
        else:
            json.dump(data, f)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _training_run(root, name, summary, mious):
    """mmengine's training layout: vis_data/scalars.json with loss rows and val rows."""
    run = osp.join(root, name, '20260101_000000')
    rows = []
    for step, miou in enumerate(mious):
        rows += [{'loss': 1.0 / (step + 1), 'step': 10 * step + 5},
                 {'aAcc': 90.0, 'mIoU': miou, 'mAcc': 70.0, 'step': 10 * step + 10}]
    _write(osp.join(run, 'vis_data', 'scalars.json'), rows, lines=True)
    _write(osp.join(run, 'calibration', 'calibration.json'), summary)
    return osp.join(root, name)


def _test_run(root, name, summary, miou, stale_summary):
    """tools/test.py's layout (<ts>/<ts>.json), plus an older evaluation that must be skipped."""
    old = osp.join(root, name, '20250101_000000')
    _write(osp.join(old, 'calibration', 'calibration.json'), stale_summary, mtime=1_000_000)
    _write(osp.join(old, '20250101_000000.json'), {'mIoU': 1.0}, mtime=1_000_000)
    new = osp.join(root, name, '20260102_000000')
    _write(osp.join(new, 'calibration', 'calibration.json'), summary)
    _write(osp.join(new, '20260102_000000.json'), {'aAcc': 91.0, 'mIoU': miou, 'mAcc': 71.0})
    return osp.join(root, name)


@pytest.fixture(scope='module')
def tool():
    """The tool's logic (and ``main``), as its script imports it."""
    return comparison


def _run(*args):
    return run_tool(TOOL, *args, timeout=300)


def _parse_table(markdown):
    rows = [line for line in markdown.splitlines() if line.startswith('| ')][2:]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        table[cells[0]] = dict(zip(COLUMNS, cells[1:]))
    return table


def test_table_values_best_in_bold_and_plot(tmp_path, tool, capsys):
    summaries = {'ce': _summary(3.0, seed=1), 'cals': _summary(1.0, seed=1),
                 'ls': _summary(0.6, seed=1)}
    mious = {'ce': 61.237, 'cals': 62.5}
    # 'ls' holds only a calibration.json, as tools/analysis/temperature_scaling.py's output
    # would without its temperature_scaling.json: no mIoU.
    _write(osp.join(tmp_path, 'ls', 'calibration.json'), summaries['ls'])
    dirs = [_training_run(tmp_path, 'ce', summaries['ce'], [40.0, mious['ce']]),
            _test_run(tmp_path, 'cals', summaries['cals'], mious['cals'],
                      stale_summary=_summary(9.0, seed=1)),
            osp.join(tmp_path, 'ls')]
    out = tmp_path / 'out'
    tool.main([*dirs, '--out-dir', str(out)])
    stdout = capsys.readouterr().out
    markdown = (out / 'comparison.md').read_text()
    table = _parse_table(markdown)
    assert set(table) == {'ce', 'cals', 'ls'}

    expected = {name: {c: s['metrics'][c] for c in COLUMNS[1:]} for name, s in summaries.items()}
    for name, values in expected.items():
        values['mIoU'] = mious.get(name)
    for column in COLUMNS:
        present = {n: v[column] for n, v in expected.items() if v[column] is not None}
        pick = max if column == 'mIoU' else min
        best = pick(round(v, 2) for v in present.values())
        for name, row in table.items():
            value = expected[name][column]
            if value is None:
                assert row[column] == '-'
                continue
            text = f'{value:.2f}'
            bold = round(value, 2) == best
            assert row[column] == (f'**{text}**' if bold else text), (name, column)
    assert 'ls: no mIoU found' in markdown and 'note: ls: no mIoU' in stdout
    assert table['cals']['mIoU'] == '**62.50**' and table['ce']['mIoU'] == '61.24'
    # The newer of the two evaluations of 'cals' was used, not the stale one.
    assert '20260102_000000' in markdown and '20250101_000000' not in markdown
    png = (out / 'reliability_comparison.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
    assert '| method | mIoU |' in stdout


def test_names_option(tmp_path, tool):
    a = _training_run(tmp_path, 'run_a', _summary(2.0), [50.0])
    b = _training_run(tmp_path, 'run_b', _summary(1.0), [52.0])
    out = tmp_path / 'out'
    tool.main([a, b, '--out-dir', str(out), '--names', 'CE', 'CALS'])
    assert set(_parse_table((out / 'comparison.md').read_text())) == {'CE', 'CALS'}
    with pytest.raises(tool.UsageError, match='--names gives 1 names for 2 work dirs'):
        tool.main([a, b, '--out-dir', str(out), '--names', 'CE'])
    # The same base name without --names: two runs of one method (see the seed tests below).
    same = _training_run(tmp_path / 'other', 'run_a', _summary(2.0, seed=3), [54.0])
    tool.main([a, same, '--out-dir', str(out)])
    table = _parse_table((out / 'comparison.md').read_text())
    assert set(table) == {'run_a (2 runs)'}
    assert table['run_a (2 runs)']['mIoU'] == '**52.00** ± 2.00'
    with pytest.raises(tool.UsageError, match='given more than once'):
        tool.main([a, b, a + os.sep, '--out-dir', str(out)])


def test_work_dir_without_results(tmp_path):
    good = _training_run(tmp_path, 'good', _summary(2.0), [50.0])
    empty = tmp_path / 'empty_run'
    (empty / '20260101_000000' / 'vis_data').mkdir(parents=True)
    result = _run(good, str(empty), '--out-dir', str(tmp_path / 'out'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(empty) in lines[0] and 'calibration.json' in lines[0]
    missing = _run(str(tmp_path / 'nowhere'), '--out-dir', str(tmp_path / 'out'))
    assert missing.returncode == 2 and 'nowhere does not exist' in missing.stderr
    assert not (tmp_path / 'out' / 'comparison.md').exists()


@pytest.mark.parametrize('other', [
    {'classes': ['road', 'car', 'person']},   # other class names
    {'pixels': 2000},                          # other number of evaluated pixels
])
def test_runs_on_different_datasets(tmp_path, other):
    a = _training_run(tmp_path, 'camvid_ce', _summary(2.0), [50.0])
    b = _training_run(tmp_path, 'city_ce', _summary(2.0, **other), [50.0])
    result = _run(a, b, '--out-dir', str(tmp_path / 'out'))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'different datasets' in lines[0]
    assert 'camvid_ce' in lines[0] and 'city_ce' in lines[0]


def test_temperature_scaling_work_dir(tmp_path, tool, capsys):
    """A temperature_scaling.py work dir joins the comparison with its mIoU."""
    summary = _summary(1.0, seed=2)
    _write(osp.join(tmp_path, 'ce_ts', 'calibration.json'), summary)
    _write(osp.join(tmp_path, 'ce_ts', 'temperature_scaling.json'),
           {'temperature': 1.7, 'eval': {'split': 'val', 'mIoU': 48.126}})
    ce = _training_run(tmp_path, 'ce', _summary(2.0, seed=2), [48.126])
    tool.main([ce, str(tmp_path / 'ce_ts'), '--out-dir', str(tmp_path / 'out')])
    table = _parse_table(capsys.readouterr().out)
    assert table['ce_ts']['mIoU'] == table['ce']['mIoU'] == '**48.13**'


def _pooled(summaries):
    """Reference pooling: one CalibrationStats-like merge of bins, by explicit loops."""
    num_bins = len(summaries[0]['reliability']['count'])
    counts, confs, accs = [], [], []
    for b in range(num_bins):
        n = [s['reliability']['count'][b] for s in summaries]
        counts.append(sum(n))
        if sum(n):
            confs.append(sum(k * s['reliability']['confidence'][b]
                             for k, s in zip(n, summaries) if k) / sum(n))
            accs.append(sum(k * s['reliability']['accuracy'][b]
                            for k, s in zip(n, summaries) if k) / sum(n))
        else:
            confs.append(None)
            accs.append(None)
    return counts, confs, accs


def test_seeds_grouped_mean_spread_and_bold(tmp_path, tool, capsys):
    """Runs sharing a --names entry form one row: mean ± half the range, bold on the mean."""
    summaries = {('CE', 0): _summary(3.0, seed=4), ('CE', 1): _summary(2.5, seed=5),
                 ('CALS', 0): _summary(1.0, seed=4), ('CALS', 1): _summary(1.4, seed=5),
                 ('CALS', 2): _summary(0.8, seed=6), ('LS', 0): _summary(0.7, seed=4)}
    mious = {('CE', 0): 50.0, ('CE', 1): 53.0, ('CALS', 0): 51.0, ('CALS', 1): 50.5,
             ('CALS', 2): 52.5, ('LS', 0): 51.9}
    dirs, names = [], []
    for (name, seed), summary in summaries.items():
        dirs.append(_training_run(tmp_path, f'{name}_seed{seed}', summary,
                                  [10.0, mious[(name, seed)]]))
        names.append(name)
    out = tmp_path / 'out'
    tool.main([*dirs, '--out-dir', str(out), '--names', *names])
    markdown = (out / 'comparison.md').read_text()
    table = _parse_table(markdown)
    assert list(table) == ['CE (2 runs)', 'CALS (3 runs)', 'LS']
    assert 'half the range' in markdown and capsys.readouterr().out.count('± ') >= 12

    expected = {}
    for method in ('CE', 'CALS', 'LS'):
        keys = [k for k in summaries if k[0] == method]
        per_column = {}
        for column in COLUMNS:
            found = [mious[k] if column == 'mIoU' else summaries[k]['metrics'][column]
                     for k in keys]
            per_column[column] = (sum(found) / len(found), (max(found) - min(found)) / 2,
                                  len(found))
        expected[method] = per_column
    rows = {'CE': 'CE (2 runs)', 'CALS': 'CALS (3 runs)', 'LS': 'LS'}
    for column in COLUMNS:
        pick = max if column == 'mIoU' else min
        best = pick(round(v[column][0], 2) for v in expected.values())
        for method, values in expected.items():
            mean, spread, count = values[column]
            text = f'{mean:.2f}'
            if round(mean, 2) == best:
                text = f'**{text}**'
            if count > 1:
                text += f' ± {spread:.2f}'
            assert table[rows[method]][column] == text, (method, column)
    # mIoU means: CE 51.5, CALS 51.333.., LS 51.9 -> LS holds the best mean, not the best run.
    assert table['LS']['mIoU'] == '**51.90**' and table['CE (2 runs)']['mIoU'] == '51.50 ± 1.50'
    assert markdown.count('CALS: ') == 3  # every run listed among the sources


def test_seeds_pooled_reliability_curve(tmp_path, tool):
    """A method's reliability curve pools its runs' bins, weighted by the bin counts."""
    runs = [{'name': 'CE', 'calibration': f'run{i}', 'summary': _summary(s, seed=i, pixels=p),
             'values': dict.fromkeys(COLUMNS, 1.0)}
            for i, (s, p) in enumerate([(3.0, 3000), (1.0, 1000), (0.5, 500)])]
    pooled = tool.group_runs(runs)[0]['summary']['reliability']
    counts, confs, accs = _pooled([run['summary'] for run in runs])
    assert pooled['count'] == counts and sum(counts) == 4500
    assert pooled['confidence'] == pytest.approx(confs, abs=1e-12)
    assert pooled['accuracy'] == pytest.approx(accs, abs=1e-12)
    # Pooling differs from a plain mean of the runs' bins wherever the counts differ.
    full = [b for b in range(len(counts))
            if all(run['summary']['reliability']['count'][b] for run in runs)]
    plain = [sum(run['summary']['reliability']['accuracy'][b] for run in runs) / 3
             for b in full]
    assert full and any(abs(accs[b] - p) > 1e-3 for b, p in zip(full, plain))

    other_bins = _summary(1.0, seed=9)
    stats_bins = len(other_bins['reliability']['bin_lower'])
    other_bins['reliability'] = {key: value[:stats_bins - 1]
                                 for key, value in other_bins['reliability'].items()}
    runs.append({'name': 'CE', 'calibration': 'odd', 'summary': other_bins,
                 'values': dict.fromkeys(COLUMNS, 1.0)})
    with pytest.raises(tool.UsageError, match='different reliability bins'):
        tool.group_runs(runs)


def test_seed_without_miou_leaves_the_mean_out(tmp_path, tool):
    """If one run of a method has no mIoU, the method shows '-' for it (no mean of a subset)."""
    a = _training_run(tmp_path, 'ce_seed0', _summary(2.0), [50.0])
    b = tmp_path / 'ce_seed1'
    _write(osp.join(b, 'calibration.json'), _summary(2.0, seed=1))
    out = tmp_path / 'out'
    tool.main([a, str(b), '--out-dir', str(out), '--names', 'CE', 'CE'])
    markdown = (out / 'comparison.md').read_text()
    row = _parse_table(markdown)['CE (2 runs)']
    assert row['mIoU'] == '-' and row['ECE'].startswith('**') and ' ± ' in row['ECE']
    assert 'CE: no mIoU found' in markdown
