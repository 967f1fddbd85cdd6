"""tools/train.py and tools/test.py end to end on a generated Cityscapes-layout dataset."""
import glob
import json
import os.path as osp

import pytest
import torch
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


@pytest.fixture(scope='module')
def trained(tiny_cityscapes, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('train')
    result = _ok(run_tool('train.py', TINY, '--work-dir', work_dir, '--cfg-options',
                          *cityscapes_options(tiny_cityscapes)))
    return work_dir, result


def test_train_writes_checkpoints_and_says_it_adapted_for_cpu(trained):
    work_dir, result = trained
    assert osp.isfile(work_dir / 'iter_2.pth') and osp.isfile(work_dir / 'iter_4.pth')
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')
    assert not glob.glob(str(work_dir / '*.partial'))
    if not torch.cuda.is_available():
        log = glob.glob(str(work_dir / '*' / '*.log'))[0]
        lines = [line for line in open(log) if 'No CUDA device: adapted the config' in line]
        assert len(lines) == 1 and 'SyncBN->BN' in lines[0] and 'gloo' in lines[0]


def test_resume_continues_from_the_latest_checkpoint(trained, tiny_cityscapes):
    work_dir, _ = trained
    result = _ok(run_tool('train.py', TINY, '--work-dir', work_dir, '--resume', '--cfg-options',
                          *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=6'))
    log = result.stdout + result.stderr
    assert 'resumed epoch: 0, iter: 4' in log
    assert 'Iter(train) [5/6]' in log and 'Iter(train) [1/6]' not in log
    resumed = torch.load(work_dir / 'iter_6.pth', map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == 6
    # The optimizer state came back too: momentum buffers exist from the first run.
    assert resumed['optimizer']['state']


def test_resume_from_an_explicit_checkpoint(trained, tiny_cityscapes, tmp_path):
    work_dir, _ = trained
    result = _ok(run_tool('train.py', TINY, '--work-dir', tmp_path, '--resume',
                          work_dir / 'iter_2.pth', '--cfg-options',
                          *cityscapes_options(tiny_cityscapes), 'train_cfg.max_iters=3'))
    assert 'resumed epoch: 0, iter: 2' in result.stdout + result.stderr
    assert osp.isfile(tmp_path / 'iter_3.pth') or osp.isfile(tmp_path / 'last_checkpoint')


def test_load_from_starts_a_new_schedule_from_the_weights(trained, tiny_cityscapes, tmp_path):
    work_dir, _ = trained
    source = work_dir / 'iter_4.pth'
    result = _ok(run_tool('train.py', TINY, '--work-dir', tmp_path, '--cfg-options',
                          *cityscapes_options(tiny_cityscapes), f'load_from={source}',
                          'train_cfg.max_iters=1', 'train_cfg.val_interval=1',
                          'default_hooks.checkpoint.interval=1'))
    log = result.stdout + result.stderr
    assert f'Load checkpoint from {source}' in log and 'Iter(train) [1/1]' in log
    # One SGD step from the loaded weights: close to them, far from a fresh initialisation.
    loaded, after = _weights(source), _weights(tmp_path / 'iter_1.pth')
    key = 'backbone.layer1.0.conv1.weight'
    assert (after[key] - loaded[key]).abs().max() < 0.05 * loaded[key].abs().max()


def test_test_tool_evaluates_a_checkpoint(trained, tiny_cityscapes, tmp_path):
    work_dir, _ = trained
    result = _ok(run_tool('test.py', TINY, work_dir / 'iter_4.pth', '--work-dir', tmp_path,
                          '--show-dir', tmp_path / 'show', '--cfg-options',
                          *cityscapes_options(tiny_cityscapes)))
    results = glob.glob(str(tmp_path / '*' / '*.json'))
    assert results, result.stdout[-2000:]
    metrics = json.load(open(results[0]))
    assert 0 <= metrics['mIoU'] <= 100
    drawn = glob.glob(str(tmp_path / 'show' / '**' / '*.png'), recursive=True)
    assert len(drawn) == 2  # one picture per validation image
