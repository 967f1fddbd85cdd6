"""PixelCalibrationMetric: numbers, files, logging, padding and 2-process equality."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
from evaluation.calibration_reference import make_images, reference_metrics
from mmengine.logging import MMLogger
from mmengine.structures import PixelData
from mmseg.registry import METRICS
from mmseg.structures import SegDataSample

import mmcals  # noqa: F401  (registers PixelCalibrationMetric)

CLASSES = [f'class{k}' for k in range(6)]
WORKER = osp.join(osp.dirname(osp.abspath(__file__)), 'calibration_dist_worker.py')


def build(**kwargs):
    metric = METRICS.build(dict(type='PixelCalibrationMetric', **kwargs))
    metric.dataset_meta = dict(classes=CLASSES)
    return metric


def as_samples(images):
    return [dict(seg_logits=dict(data=z), gt_sem_seg=dict(data=y[None])) for z, y in images]


def reference_percent(images, **kwargs):
    ref = reference_metrics([z.numpy() for z, _ in images], [y.numpy() for _, y in images],
                            **kwargs)
    return {key: 100 * ref[key] for key in ('ECE', 'MCE', 'CECE', 'NLL', 'Brier',
                                            'mean_confidence', 'pixel_accuracy', 'aECE')}


def test_returns_the_reference_numbers_and_writes_the_contract_files(tmp_path):
    images = make_images(30, num_images=4)
    metric = build(out_dir=str(tmp_path))
    samples = as_samples(images)
    metric.process({}, samples[:3])
    # mmengine hands dicts; SegDataSample objects are accepted too.
    sample = SegDataSample()
    sample.seg_logits = PixelData(data=images[3][0])
    sample.gt_sem_seg = PixelData(data=images[3][1][None])
    metric.process({}, [sample])
    metrics = metric.evaluate(4)
    ref = reference_percent(images)
    assert set(metrics) == set(ref)
    saved = json.loads((tmp_path / 'calibration.json').read_text())
    for key, value in metrics.items():
        # aECE is streamed: on 1400 pixels it is exact only up to the reported bound.
        tol = saved['aECE_error_bound'] if key == 'aECE' else 1e-9
        assert value == pytest.approx(ref[key], abs=tol), key
    for name in ('calibration.json', 'calibration_history.jsonl', 'reliability_diagram.png',
                 'confidence_histogram.png'):
        assert osp.getsize(tmp_path / name) > 0, name
    assert saved['classes'] == CLASSES and saved['num_bins'] == 15
    assert saved['num_pixels'] == sum(int((y != 255).sum()) for _, y in images)
    assert saved['metrics'] == pytest.approx(metrics)
    assert [row['class'] for row in saved['per_class']] == CLASSES
    assert set(saved['per_class'][0]) == {'class', 'pixels', 'CECE', 'ECE'}
    rel = saved['reliability']
    assert set(rel) == {'bin_lower', 'bin_upper', 'count', 'confidence', 'accuracy'}
    assert all(len(v) == 15 for v in rel.values()) and sum(rel['count']) == saved['num_pixels']
    assert rel['bin_lower'][0] == 0 and rel['bin_upper'][-1] == 1


def test_history_appends_one_line_per_evaluation_and_json_holds_the_latest(tmp_path):
    metric = build(out_dir=str(tmp_path))
    results = []
    for seed in (31, 32):
        images = make_images(seed, num_images=2)
        metric.process({}, as_samples(images))
        results.append(metric.evaluate(2))
    lines = (tmp_path / 'calibration_history.jsonl').read_text().splitlines()
    assert [json.loads(line)['metrics'] for line in lines] == [
        pytest.approx(r) for r in results]
    latest = json.loads((tmp_path / 'calibration.json').read_text())
    assert latest['metrics'] == pytest.approx(results[1])
    assert results[0]['ECE'] != results[1]['ECE']  # state was reset between evaluations


def test_default_out_dir_is_beside_the_log_file_and_the_table_is_logged(tmp_path):
    log_file = tmp_path / '20240101_000000' / '20240101_000000.log'
    log_file.parent.mkdir()
    logger = MMLogger.get_instance('test_calibration_default_dir', log_file=str(log_file))
    assert MMLogger.get_current_instance() is logger
    metric = build(classes=['class0', 'class2'])
    images = make_images(33, num_images=2)
    metric.process({}, as_samples(images))
    metrics = metric.evaluate(2)
    out_dir = log_file.parent / 'calibration'
    for name in ('calibration.json', 'reliability_diagram.png', 'confidence_histogram.png'):
        assert osp.isfile(out_dir / name), name
    for handler in logger.handlers:
        handler.flush()
    log = log_file.read_text()
    assert 'per-class calibration' in log and 'pixel calibration' in log
    assert all(name in log for name in CLASSES)
    assert f"{metrics['ECE']:.2f}" in log
    assert metrics['CECE'] == pytest.approx(reference_percent(images, classes=[0, 2])['CECE'])


def test_no_log_file_means_no_files(tmp_path, monkeypatch):
    MMLogger.get_instance('test_calibration_no_file')
    monkeypatch.chdir(tmp_path)
    metric = build()
    metric.process({}, as_samples(make_images(34, num_images=1)))
    assert math_is_finite(metric.evaluate(1)['ECE'])
    assert os.listdir(tmp_path) == []


def math_is_finite(value):
    return value == value and abs(value) != float('inf')


def test_top_label_only_leaves_out_cece_and_brier(tmp_path):
    metric = build(out_dir=str(tmp_path), top_label_only=True)
    images = make_images(35, num_images=2)
    metric.process({}, as_samples(images))
    metrics = metric.evaluate(2)
    assert 'CECE' not in metrics and 'Brier' not in metrics and math_is_finite(metrics['ECE'])
    saved = json.loads((tmp_path / 'calibration.json').read_text())
    assert saved['metrics']['CECE'] is None and saved['metrics']['Brier'] is None


def test_the_samplers_padding_is_dropped_like_mmengine_does():
    images = make_images(36, num_images=5)
    metric = build()
    metric.process({}, as_samples(images))
    padded = metric.evaluate(4)  # the 5th sample is a padding repeat: dropped
    expected = reference_percent(images[:4])
    assert padded['ECE'] == pytest.approx(expected['ECE'], abs=1e-9)
    metric.process({}, as_samples(images))
    with pytest.raises(ValueError, match='at most one padded sample'):
        metric.evaluate(2)


def test_an_all_ignore_dataset_gives_nan_and_a_warning(tmp_path):
    images = [(z, torch.full_like(y, 255)) for z, y in make_images(37, num_images=2)]
    metric = build(out_dir=str(tmp_path))
    metric.process({}, as_samples(images))
    metrics = metric.evaluate(2)
    assert all(value != value for value in metrics.values())
    saved = json.loads((tmp_path / 'calibration.json').read_text())
    assert saved['num_pixels'] == 0 and saved['metrics']['ECE'] is None


def test_missing_logits_and_mismatched_classes_are_explained():
    metric = build()
    image = make_images(38, num_images=1)[0]
    with pytest.raises(KeyError, match="seg_logits"):
        metric.process({}, [dict(gt_sem_seg=dict(data=image[1][None]),
                                 pred_sem_seg=dict(data=image[1][None]))])
    wrong = build()
    wrong.dataset_meta = dict(classes=CLASSES[:4])
    with pytest.raises(ValueError, match='6 channels but dataset_meta lists 4'):
        wrong.process({}, as_samples([image]))
    with pytest.raises(ValueError, match="'road'"):
        build(classes=['class0', 'road']).process({}, as_samples([image]))
    with pytest.raises(ValueError, match='class index 6'):
        build(classes=[0, 6]).process({}, as_samples([image]))
    with pytest.raises(ValueError, match='classes must be'):
        build(classes='class0')


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_gloo_processes_give_the_single_process_results(tmp_path):
    """5 images over 2 ranks: rank 1 also gets a padding repeat of image 0, which must be
    dropped; the merged tables must equal one process's."""
    num_images = 5
    env = dict(os.environ, WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(_free_port()), OMP_NUM_THREADS='1')
    ranks = [subprocess.Popen([sys.executable, WORKER, str(tmp_path), str(num_images)],
                              env=dict(env, RANK=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], '\n'.join(outputs)[-4000:]

    single_dir = tmp_path / 'single'
    single = build(out_dir=str(single_dir))
    single.dataset_meta = dict(classes=CLASSES)
    images = make_images(20, num_images=num_images, num_classes=6)
    single.process({}, as_samples(images))
    expected = single.evaluate(num_images)
    for rank in range(2):
        got = json.loads((tmp_path / f'metrics_rank{rank}.json').read_text())
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    two = json.loads((tmp_path / 'calibration.json').read_text())
    one = json.loads((single_dir / 'calibration.json').read_text())
    assert two['num_pixels'] == one['num_pixels']
    assert two['reliability']['count'] == one['reliability']['count']
    assert [r['pixels'] for r in two['per_class']] == [r['pixels'] for r in one['per_class']]


def test_process_then_compute_metrics_follows_the_base_metric_contract(tmp_path):
    """mmseg's metric tests call ``compute_metrics(metric.results)`` after ``process``: the
    results must hold the processed images, in memory that does not grow with their number,
    and give what ``evaluate(size)`` gives."""
    images = make_images(39, num_images=5)
    direct = build(out_dir=str(tmp_path / 'direct'))
    for start in range(0, 5, 2):
        direct.process({}, as_samples(images[start:start + 2]))
        assert len(direct.results) == 2  # running total + latest image, whatever the count
    assert sum(stats.num_pixels for stats in direct.results) == sum(
        int((y != 255).sum()) for _, y in images)
    got = direct.compute_metrics(direct.results)
    via_evaluate = build(out_dir=str(tmp_path / 'evaluate'))
    via_evaluate.process({}, as_samples(images))
    expected = via_evaluate.evaluate(5)
    assert via_evaluate.results == []  # mmengine clears them after evaluating
    ref = reference_percent(images)
    bound = json.loads((tmp_path / 'direct' / 'calibration.json').read_text())[
        'aECE_error_bound']
    assert got.keys() == expected.keys() == ref.keys()
    for key in got:
        # Same tables merged in the same order, so the same float64 sums.
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
        assert got[key] == pytest.approx(ref[key], abs=bound if key == 'aECE' else 1e-9), key
