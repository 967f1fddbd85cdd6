"""The calibration metric through tools/test.py, and tools/analysis/reliability_diagram.py."""
import glob
import json
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from tooling import REPO, cityscapes_options, run_tool

from mmcals.evaluation import reliability_diagram
from mmcals.evaluation.plots import draw_reliability_curve

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


@pytest.fixture(scope='module')
def tested(tiny_cityscapes, tmp_path_factory):
    """tools/test.py on the generated val set, with IoUMetric and PixelCalibrationMetric,
    from a randomly initialised checkpoint (calibration of any model will do) whose head
    favours 'road', so that some pixels are predicted right."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    root = tmp_path_factory.mktemp('calibration_tools')
    config = root / 'tiny_calibration.py'
    config.write_text(
        f'_base_ = {TINY!r}\n'
        "val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']),\n"
        "                 dict(type='PixelCalibrationMetric')]\n"
        'test_evaluator = val_evaluator\n')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    with torch.no_grad():
        model.decode_head.conv_seg.bias[0] += 2.0
    checkpoint = root / 'random.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    work_dir = root / 'work'
    result = run_tool('test.py', config, checkpoint, '--work-dir', work_dir, '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work_dir, result.stdout + result.stderr, tiny_cityscapes


def test_test_tool_logs_the_table_and_writes_json_and_pngs(tested):
    work_dir, output, data_root = tested
    [run_dir] = glob.glob(str(work_dir / '2*'))
    calibration = osp.join(run_dir, 'calibration')
    for name in ('calibration.json', 'calibration_history.jsonl', 'reliability_diagram.png',
                 'confidence_histogram.png'):
        assert osp.getsize(osp.join(calibration, name)) > 0, name
    summary = json.load(open(osp.join(calibration, 'calibration.json')))
    # Every valid pixel of the val labels, at their original size.
    labels = glob.glob(osp.join(data_root, 'gtFine', 'val', '**', '*_labelTrainIds.png'),
                       recursive=True)
    valid = sum(int((cv2.imread(p, cv2.IMREAD_UNCHANGED) != 255).sum()) for p in labels)
    assert len(labels) == 2 and summary['num_pixels'] == valid
    assert summary['classes'][0] == 'road' and len(summary['per_class']) == 19
    # The table is in the log (file and console), next to the metrics mmengine logs.
    [log_file] = glob.glob(osp.join(run_dir, '*.log'))
    log = open(log_file).read()
    for text in ('per-class calibration', 'pixel calibration', '| road', 'aECE'):
        assert text in log and text in output, text
    metrics = json.load(open(glob.glob(osp.join(run_dir, '*.json'))[0]))
    for key in ('mIoU', 'ECE', 'aECE', 'CECE', 'NLL', 'Brier', 'MCE'):
        assert key in metrics, key
    assert metrics['ECE'] == pytest.approx(summary['metrics']['ECE'], abs=1e-3)
    # The same argmax as mmseg's prediction: pixel accuracy equals IoUMetric's aAcc.
    assert summary['metrics']['pixel_accuracy'] > 10
    assert summary['metrics']['pixel_accuracy'] == pytest.approx(metrics['aAcc'], abs=0.006)


def test_reliability_diagram_tool_redraws_from_json_and_history(tested, tmp_path):
    work_dir, _, _ = tested
    [saved] = glob.glob(str(work_dir / '2*' / 'calibration' / 'calibration.json'))
    out = tmp_path / 'diagram.png'
    histogram = tmp_path / 'histogram.png'
    result = run_tool('analysis/reliability_diagram.py', saved, '--out', out,
                      '--histogram', histogram, '--title', 'random weights')
    assert result.returncode == 0, result.stderr
    for png in (out, histogram):
        image = cv2.imread(str(png))
        assert image is not None and image.shape == (500, 500, 3) and image.std() > 0
    history = tmp_path / 'calibration_history.jsonl'
    history.write_text(open(osp.join(osp.dirname(saved), 'calibration_history.jsonl')).read())
    assert _tool().main([str(history), '--index', '0']) == 0
    assert cv2.imread(str(tmp_path / 'calibration_history_reliability.png')) is not None


def _tool():
    """The tool's logic (and ``main``), as its script imports it."""
    return reliability_diagram


def test_reliability_diagram_tool_rejects_bad_input(tmp_path, capsys):
    tool = _tool()
    assert tool.main([str(tmp_path / 'missing.json')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    other = tmp_path / 'other.json'
    other.write_text(json.dumps({'mIoU': 50.0}))
    assert tool.main([str(other)]) == 2
    assert 'not a PixelCalibrationMetric result' in capsys.readouterr().err
    history = tmp_path / 'h.jsonl'
    history.write_text('')
    assert tool.main([str(history)]) == 2
    assert 'holds no evaluation' in capsys.readouterr().err
    assert not list(tmp_path.glob('*.png'))


def test_reliability_curve_can_be_overlaid_for_comparisons():
    summary = {'reliability': {'bin_lower': [0, 0.5], 'bin_upper': [0.5, 1], 'count': [0, 3],
                               'confidence': [None, 0.8], 'accuracy': [None, 0.6]}}
    figure = Figure()
    ax = figure.add_subplot(1, 1, 1)
    draw_reliability_curve(ax, summary, label='CE')
    draw_reliability_curve(ax, summary, label='CALS')
    [line, _] = ax.get_lines()
    assert line.get_label() == 'CE'
    assert np.allclose(line.get_xdata(), [0.8]) and np.allclose(line.get_ydata(), [0.6])


def test_table_metrics_are_parseable_from_the_log(tested):
    """The summary row carries every metric with two decimals."""
    _, output, _ = tested
    header = next(line for line in output.splitlines() if line.startswith('| pixels |'))
    names = [cell.strip() for cell in header.strip('|').split('|')]
    assert names[:3] == ['pixels', 'ECE', 'MCE']
    row = output.splitlines()[output.splitlines().index(header) + 2]
    values = [cell.strip() for cell in row.strip('|').split('|')]
    assert all(re.fullmatch(r'\d+(\.\d\d)?', v) for v in values)
