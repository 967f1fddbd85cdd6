"""compare_calibration.py --per-class: ECE_k and CECE_k columns against a direct computation."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from evaluation.calibration_reference import reference_metrics
from inprocess_tool import run_tool_here

from mmcals.evaluation import comparison
from mmcals.evaluation.calibration_stats import CalibrationStats

CLASSES = ['road', 'car', 'sky', 'person', 'bicycle']
# Ground-truth shares: bicycle rarest, then person, car.
SHARES = [0.45, 0.12, 0.35, 0.06, 0.02]
PIXELS = 4000


def _images(sharpness, seed):
    """Random logits favouring the label (sharpness scales them), labels drawn by SHARES;
    the same labels for every seed, so that runs compare on the same data."""
    labels = torch.from_numpy(np.random.default_rng(0).choice(len(CLASSES), PIXELS, p=SHARES))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(CLASSES), PIXELS, generator=gen, dtype=torch.float64)
    logits += 1.5 * torch.nn.functional.one_hot(labels, len(CLASSES)).t()
    return sharpness * logits, labels


def _run(root, name, sharpness, seed):
    """A work dir holding the calibration.json of PixelCalibrationMetric's statistics."""
    logits, labels = _images(sharpness, seed)
    stats = CalibrationStats(len(CLASSES))
    stats.update(logits, labels)
    folder = osp.join(root, name)
    os.makedirs(osp.join(folder, 'calibration'))
    with open(osp.join(folder, 'calibration', 'calibration.json'), 'w') as f:
        json.dump(stats.summary(CLASSES), f)
    return folder, reference_metrics([logits.numpy()], [labels.numpy()])


def _table(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith('| ')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    return {cells[0]: dict(zip(header[1:], cells[1:]))
            for cells in ([c.strip() for c in line.strip('|').split('|')]
                          for line in lines[2:])}


def _number(cell):
    """'**1.23** ± 0.40' -> (1.23, 0.40); '1.23' -> (1.23, None)."""
    value, _, spread = cell.replace('**', '').partition(' ± ')
    return float(value), float(spread) if spread else None


@pytest.fixture
def runs(tmp_path):
    """CE: two seeds (sharper logits), CALS: one seed; each with the reference metrics."""
    made = {('CE', 0): _run(tmp_path, 'ce_s0', 3.0, 1), ('CE', 1): _run(tmp_path, 'ce_s1', 2.5, 2),
            ('CALS', 0): _run(tmp_path, 'cals_s0', 1.0, 3)}
    return made


def _expected(runs, method, key, k):
    """Mean and half range over the method's runs of the reference's ECE_k / CECE_k, in %."""
    found = [100 * reference[f'{key}_k'][k] for (name, _), (_, reference) in runs.items()
             if name == method]
    return sum(found) / len(found), (max(found) - min(found)) / 2, len(found)


@pytest.mark.parametrize('selection, chosen', [
    (['person', 'road'], ['person', 'road']),       # named classes, in the order given
    (['2'], ['bicycle', 'person']),                  # the two rarest
    ([], ['bicycle', 'person', 'car']),              # alone: the three rarest
])
def test_per_class_columns_match_a_direct_computation(runs, tmp_path, selection, chosen):
    dirs = [folder for folder, _ in runs.values()]
    names = [name for name, _ in runs]
    out = tmp_path / 'out'
    comparison.main([*dirs, '--names', *names, '--out-dir', str(out), '--per-class',
                     *selection])
    markdown = (out / 'comparison.md').read_text()
    table = _table(markdown)
    columns = list(next(iter(table.values())))
    expected_columns = list(comparison.COLUMNS)
    for name in chosen:
        expected_columns += [f'ECE_k {name}', f'CECE_k {name}']
    assert columns == expected_columns
    rows = {'CE': table['CE (2 runs)'], 'CALS': table['CALS']}
    # Ground-truth pixel counts named in the intro, from the labels themselves.
    labels = _images(1.0, 0)[1].numpy()
    for name in chosen:
        assert f'{name} {int((labels == CLASSES.index(name)).sum())}' in markdown
    for name in chosen:
        k = CLASSES.index(name)
        for key in ('ECE', 'CECE'):
            column = f'{key}_k {name}'
            means = {}
            for method, row in rows.items():
                mean, spread, count = _expected(runs, method, key, k)
                shown, shown_spread = _number(row[column])
                # Two decimals shown: within half a unit of the last digit of the reference.
                assert abs(shown - mean) <= 0.005 + 1e-9, (method, column)
                if count > 1:
                    assert abs(shown_spread - spread) <= 0.005 + 1e-9, (method, column)
                means[method] = round(mean, 2)
            best = min(means.values())
            for method, row in rows.items():
                assert row[column].startswith('**') == (means[method] == best), column


def test_per_class_of_a_class_without_pixels_and_top_label_only(tmp_path):
    """ECE_k of a class without labelled pixels, and CECE_k of a top_label_only run, are '-'."""
    logits, labels = _images(2.0, 1)
    labels[labels == CLASSES.index('sky')] = 0  # no sky pixel left
    dirs = []
    for name, top_only in (('full', False), ('top', True)):
        stats = CalibrationStats(len(CLASSES), top_label_only=top_only)
        stats.update(logits, labels)
        folder = tmp_path / name / 'calibration'
        folder.mkdir(parents=True)
        (folder / 'calibration.json').write_text(json.dumps(stats.summary(CLASSES)))
        dirs.append(str(tmp_path / name))
    out = tmp_path / 'out'
    comparison.main([*dirs, '--out-dir', str(out), '--per-class', 'sky', 'car'])
    table = _table((out / 'comparison.md').read_text())
    reference = reference_metrics([logits.numpy()], [labels.numpy()])
    assert table['full']['ECE_k sky'] == table['top']['ECE_k sky'] == '-'
    assert _number(table['full']['CECE_k sky'])[0] == pytest.approx(
        100 * reference['CECE_k'][CLASSES.index('sky')], abs=0.005 + 1e-9)
    assert table['top']['CECE_k car'] == '-' and table['top']['ECE_k car'] != '-'
    # The rarest classes are chosen among those with labelled pixels: sky is left out.
    comparison.main([*dirs, '--out-dir', str(out), '--per-class', '4'])
    assert 'ECE_k sky' not in (out / 'comparison.md').read_text()


@pytest.mark.parametrize('selection, needles', [
    (['pedestrian'], ["unknown class 'pedestrian'", 'road, car, sky, person, bicycle']),
    (['car', 'Car'], ["unknown class 'Car'"]),
    (['0'], ['--per-class 0', 'between 1 and 5']),
    (['6'], ['--per-class 6', 'between 1 and 5']),
])
def test_bad_per_class_is_one_line_exit_2(runs, tmp_path, selection, needles):
    dirs = [folder for folder, _ in runs.values()]
    out = tmp_path / 'out'
    result = run_tool_here('analysis/compare_calibration.py', *dirs, '--out-dir', out,
                           '--per-class', *selection)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: --per-class'), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (out / 'comparison.md').exists()


def test_per_class_needs_the_same_labels_and_a_per_class_table(runs, tmp_path):
    (ce, _), (other, _) = runs[('CE', 0)], runs[('CALS', 0)]
    path = osp.join(other, 'calibration', 'calibration.json')
    summary = json.load(open(path))
    # Same number of pixels, other labels: one pixel moved from road to car.
    summary['per_class'][0]['pixels'] -= 1
    summary['per_class'][1]['pixels'] += 1
    json.dump(summary, open(path, 'w'))
    result = run_tool_here('analysis/compare_calibration.py', ce, other, '--out-dir',
                           tmp_path / 'out', '--per-class')
    assert result.returncode == 2 and 'different datasets' in result.stderr
    assert 'per-class pixel counts differ' in result.stderr
    del summary['per_class']
    json.dump(summary, open(path, 'w'))
    result = run_tool_here('analysis/compare_calibration.py', ce, other, '--out-dir',
                           tmp_path / 'out', '--per-class')
    assert result.returncode == 2 and 'no per-class table' in result.stderr
    assert path in result.stderr
    # Without --per-class the same runs compare as before.
    assert run_tool_here('analysis/compare_calibration.py', ce, other, '--out-dir',
                         tmp_path / 'out').returncode == 0
