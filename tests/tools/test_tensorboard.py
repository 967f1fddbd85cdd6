"""``--vis-backend tensorboard``: the logged scalars and the reliability diagram in TensorBoard.

One tiny CALS training (4 iterations, validation at 2 and 4) writes an event file, read back
with TensorBoard's own ``EventAccumulator`` and compared with what the metric and CALSHook
wrote to their JSON files at the same validations.
"""
import glob
import io
import json
import os.path as osp
import sys

import numpy as np
import pytest
from inprocess_tool import run_tool_here
from mmengine.config import Config
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tooling import REPO, cityscapes_options, run_tool

from mmcals import cli

TINY_CALS = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')
VALIDATIONS = [2, 4]
HEADS = ('decode_head', 'auxiliary_head')
# TensorBoard stores scalars as float32.
FLOAT32 = dict(rel=1e-6, abs=1e-12)


@pytest.fixture(scope='module')
def run(tiny_cityscapes, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('tensorboard')
    result = run_tool('train.py', TINY_CALS, '--work-dir', work_dir, '--vis-backend',
                      'tensorboard', '--cfg-options', *cityscapes_options(tiny_cityscapes))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    events = glob.glob(str(work_dir / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert len(events) == 1, events
    accumulator = EventAccumulator(events[0], size_guidance={'scalars': 0, 'images': 0})
    accumulator.Reload()
    return work_dir, accumulator


def _scalars(accumulator, tag) -> dict:
    assert tag in accumulator.Tags()['scalars'], (tag, accumulator.Tags()['scalars'])
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_calibration_metrics_of_each_validation_are_scalars(run):
    work_dir, accumulator = run
    history = glob.glob(str(work_dir / '*' / 'calibration' / 'calibration_history.jsonl'))
    evaluations = [json.loads(line)['metrics'] for line in open(history[0])]
    assert len(evaluations) == len(VALIDATIONS)
    for key in ('ECE', 'MCE', 'aECE', 'CECE', 'NLL', 'Brier', 'mean_confidence',
                'pixel_accuracy'):
        logged = _scalars(accumulator, key)
        assert sorted(logged) == VALIDATIONS, key
        for step, metrics in zip(VALIDATIONS, evaluations):
            assert logged[step] == pytest.approx(metrics[key], **FLOAT32), (key, step)
    assert sorted(_scalars(accumulator, 'mIoU')) == VALIDATIONS
    assert sorted(_scalars(accumulator, 'decode.loss_cals')) == [1, 2, 3, 4]


def test_cals_multipliers_and_diagnostics_of_each_update_are_scalars(run):
    work_dir, accumulator = run
    history = json.load(open(work_dir / 'cals_history.json'))['losses']
    for head in HEADS:
        updates = {update['iter']: update for update in history[head] if update['update']}
        assert sorted(updates) == VALIDATIONS
        for step, update in updates.items():
            for name in ('lambda', 'rho'):
                values = update[name]
                for stat, expected in (('mean', np.mean(values)), ('min', min(values)),
                                       ('max', max(values))):
                    logged = _scalars(accumulator, f'cals/{head}/{name}_{stat}')
                    assert logged[step] == pytest.approx(expected, **FLOAT32), (head, name)
            for key in ('acting_share', 'violating_share', 'gap_p50', 'gap_p90', 'gap_p99'):
                logged = _scalars(accumulator, f'cals/{head}/{key}')
                assert logged[step] == pytest.approx(update['all'][key], **FLOAT32), key
            acting = _scalars(accumulator, f'cals/{head}/acting_share_max')
            assert acting[step] == pytest.approx(max(update['acting_share']), **FLOAT32)


def test_reliability_diagram_is_an_image_of_each_validation(run):
    work_dir, accumulator = run
    assert 'reliability_diagram' in accumulator.Tags()['images']
    images = {event.step: event for event in accumulator.Images('reliability_diagram')}
    assert sorted(images) == VALIDATIONS
    # The visualizer gave the same picture to every backend: the local one wrote it as a PNG.
    local = glob.glob(str(work_dir / '*' / 'vis_data' / 'vis_image' / 'reliability_diagram_4.png'))
    in_tensorboard = np.asarray(Image.open(io.BytesIO(images[4].encoded_image_string)))
    on_disk = np.asarray(Image.open(local[0]).convert('RGB'))
    assert in_tensorboard.shape == on_disk.shape == (images[4].height, images[4].width, 3)
    assert np.array_equal(in_tensorboard, on_disk)
    assert len(np.unique(in_tensorboard.reshape(-1, 3), axis=0)) > 10  # a drawing, not blank


def test_vis_backends_are_added_once_and_keep_the_configured_ones():
    cfg = Config(dict(visualizer=dict(type='SegLocalVisualizer',
                                      vis_backends=[dict(type='LocalVisBackend')])))
    cli.add_vis_backends(cfg, ['tensorboard', 'local', 'tensorboard'])
    assert [b['type'] for b in cfg.visualizer.vis_backends] == ['LocalVisBackend',
                                                                'TensorboardVisBackend']
    assert cfg.visualizer.type == 'SegLocalVisualizer'
    bare = Config(dict())
    cli.add_vis_backends(bare, ['tensorboard'])
    assert [b['type'] for b in bare.visualizer.vis_backends] == ['LocalVisBackend',
                                                                 'TensorboardVisBackend']


def test_without_tensorboard_the_switch_is_one_line(tmp_path, monkeypatch, tiny_cityscapes):
    monkeypatch.setitem(sys.modules, 'tensorboard', None)  # what find_spec sees uninstalled
    result = run_tool_here('train.py', TINY_CALS, '--work-dir', tmp_path / 'wd',
                           '--vis-backend', 'tensorboard', '--cfg-options',
                           *cityscapes_options(tiny_cityscapes))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --vis-backend tensorboard needs the tensorboard package: "
        "pip install 'mmcals[tensorboard]'"]
    assert not osp.exists(tmp_path / 'wd')
