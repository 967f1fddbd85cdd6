"""tools/experiments/camvid_report.py on hand-made per-run results folders."""
import json
import os
import os.path as osp

import pytest
import torch
from tooling import run_tool

from mmcals.evaluation import study_report
from mmcals.evaluation.calibration_stats import CalibrationStats

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'experiments', 'camvid_report.py')
CLASSES = ['road', 'car', 'sky']


def _summary(sharpness, seed):
    """A real calibration.json dict: random logits of one sharpness through CalibrationStats."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (1, 2000), generator=gen)
    logits = torch.randn(len(CLASSES), 1, 2000, generator=gen)
    logits += 1.5 * torch.nn.functional.one_hot(labels[0], len(CLASSES)).t()[:, None]
    stats = CalibrationStats(len(CLASSES))
    stats.update(sharpness * logits, labels)
    return stats.summary(CLASSES)


def _dump(path, data, lines=False):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        if lines:
            f.write(''.join(json.dumps(row) + '\n' for row in data))
        else:
            json.dump(data, f)


def _run_folder(root, run, sharpness, seed, miou, cals=False):
    folder = osp.join(root, run)
    _dump(osp.join(folder, 'calibration.json'), _summary(sharpness, seed))
    _dump(osp.join(folder, 'test_metrics.json'), {'mIoU': miou, 'aAcc': 90.0})
    rows = []
    for it in (250, 500, 750, 1000):
        rows.append({'loss': 2.0 / it, 'iter': it, 'step': it})
        rows.append({'mIoU': miou - 1000.0 / it, 'ECE': 3.0, 'step': it})
    _dump(osp.join(folder, 'train_scalars.json'), rows, lines=True)
    _dump(osp.join(folder, 'wall_time.json'), {'run': run, 'train_and_test_seconds': 120})
    if cals:
        entries = [{'update': u, 'iter': 250 * u, 'lambda': [1e-6 * (k + u) for k in range(3)],
                    'rho': [1.0] * 3, 'acting_share': [0.01 * u, None, 0.0],
                    'all': {'acting_share': 0.005 * u, 'gap_p50': 5.0, 'gap_p90': 9.0,
                            'gap_p99': 14.0}} for u in (1, 2)]
        _dump(osp.join(folder, 'cals_history.json'),
              {'source': 'val', 'classes': CLASSES, 'losses': {'decode_head': entries}})


@pytest.fixture()
def results(tmp_path):
    root = str(tmp_path / 'results')
    for seed, (sharp, miou) in enumerate([(1.0, 40.0), (1.5, 42.0), (2.0, 44.0)]):
        _run_folder(root, f'ce_s{seed}', sharp, seed, miou)
        _run_folder(root, f'cals_m10_s{seed}', sharp * 1.01, seed, miou + 0.5, cals=True)
    _run_folder(root, 'ls_s0', 0.5, 0, 30.0)
    # LS was stopped twice and resumed (tools/experiments/camvid_study.sh): three segments
    _dump(osp.join(root, 'ls_s0', 'wall_time.json'), {
        'run': 'ls_s0', 'train_and_test_seconds': 600, 'segments': [
            {'from_iter': 0, 'to_iter': 250, 'seconds': 100},
            {'from_iter': 250, 'to_iter': 750, 'seconds': 200},
            {'from_iter': 750, 'to_iter': 1000, 'seconds': 300}],
        'machine': 'Some CPU, 2 CPUs, torch kernels AVX2'})
    _dump(osp.join(root, 'margin', 'margin.json'), {'margin': 9.0})
    return root


def _rows(markdown):
    rows = [line for line in markdown.splitlines() if line.startswith('| ')][2:]
    return {r.strip('|').split('|')[0].strip(): [c.strip() for c in r.strip('|').split('|')[1:]]
            for r in rows}


def test_tables_and_figures_from_the_results_alone(results, tmp_path):
    out = str(tmp_path / 'report')
    proc = run_tool(TOOL, results, '--out-dir', out, '--camvid-root', tmp_path / 'absent',
                    timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ('comparison.md', 'comparison_runs.md', 'versus_ce.md', 'confidence.md',
                 'convergence.md',
                 'convergence.png', 'lambda_table.md', 'cals_diagnostics.png',
                 'reliability_comparison.png', 'wall_times.md'):
        assert osp.getsize(osp.join(out, name)) > 0, name
    # Missing runs are listed, not silently dropped.
    assert 'cals_chosen_s0' in proc.stderr and 'mbls_s0' in proc.stderr

    # CE's mIoU: mean of the test metrics (40, 42, 44) ± half the range.
    table = _rows(open(osp.join(out, 'comparison.md')).read())
    assert table['CE (3 runs)'][0].replace('*', '') == '42.00 ± 2.00'
    ece = [_summary(s, seed)['metrics']['ECE'] for seed, s in enumerate([1.0, 1.5, 2.0])]
    mean, spread = sum(ece) / 3, (max(ece) - min(ece)) / 2
    assert table['CE (3 runs)'][1].replace('*', '') == f'{mean:.2f} ± {spread:.2f}'

    # Differences to CE, marked inside CE's spread where |delta| <= spread.
    versus = _rows(open(osp.join(out, 'versus_ce.md')).read())
    assert versus['CALS-m10 (3 runs)'][0] == '+0.50 ≈'          # 0.5 <= 2.0
    assert versus['LS'][0] == '-12.00'                          # outside
    ls_ece = _summary(0.5, 0)['metrics']['ECE'] - mean
    assert versus['LS'][1].split()[0] == f'{ls_ece:+.2f}'
    assert versus['LS'][1].endswith('≈') == (abs(ls_ece) <= spread)

    # Confidence against accuracy, per run, from its calibration.json: the sharpest CE run
    # (logits x 2) is the most confident; the difference is confidence - accuracy.
    conf = _rows(open(osp.join(out, 'confidence.md')).read())
    for seed, sharp in enumerate([1.0, 1.5, 2.0]):
        metrics = _summary(sharp, seed)['metrics']
        assert conf[f'ce_s{seed}'] == [
            f"{metrics['mean_confidence']:.2f}", f"{metrics['pixel_accuracy']:.2f}",
            f"{metrics['mean_confidence'] - metrics['pixel_accuracy']:+.2f}"]
    assert float(conf['ls_s0'][2]) < 0 < float(conf['ce_s2'][2])  # blunt LS, sharp CE
    assert len(conf) == 7  # every run: 3 CE, 3 CALS-m10, LS

    # λ table: last update's λ and acting share per class; a class without pairs shows '-'.
    lam = _rows(open(osp.join(out, 'lambda_table.md')).read())
    assert lam['road'][2] == f'{2e-6:.3g} / 2.00'
    assert lam['car'][2] == f'{3e-6:.3g} / -'
    # Convergence: the last quarter (iterations >= 750) of CE s0's mIoU: 40-1000/750 .. 40-1.
    conv = open(osp.join(out, 'convergence.md')).read()
    assert f'{(1000 / 750 - 1):.2f} points' in conv
    # Wall times: a resumed run says where it resumed, each run where it ran (when the study
    # recorded it); the total adds every run.
    wall = _rows(open(osp.join(out, 'wall_times.md')).read())
    assert wall['ls_s0'] == ['10.0', '250, 750', 'Some CPU, 2 CPUs, torch kernels AVX2']
    assert wall['ce_s0'] == ['2.0', '', 'not recorded']
    assert wall['all (run two at a time)'][0] == f'{(6 * 120 + 600) / 60:.1f}'


def test_no_results_is_one_line_error(tmp_path):
    proc = run_tool(TOOL, tmp_path, timeout=300)
    assert proc.returncode == 2
    assert 'holds no finished run' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_runs_are_grouped_by_method(results):
    found, missing = study_report.find_runs(results, ['0', '1', '2'])
    names = [name for name, _ in found]
    assert names.count('CE') == 3 and names.count('CALS-m10') == 3 and names.count('LS') == 1
    assert 'ce_ts_s0' in missing and 'focal_s0' in missing
