"""tools/train.py and tools/test.py end to end on a generated Cityscapes-layout dataset."""
import glob
import json
import os.path as osp

import pytest
import torch
from inprocess_tool import run_tool_here
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


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
    resumed = torch.load(work_dir / 'iter_6.pth', map_location='cpu', weights_only=True)
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
    # One of mmseg's overlays and one confidence figure per validation image.
    drawn = glob.glob(str(tmp_path / 'show' / '**' / 'test_*.png_0.png'), recursive=True)
    assert len(drawn) == 2
    maps = glob.glob(str(tmp_path / 'show' / '**' / 'test_confidence_*.png'), recursive=True)
    assert len(maps) == 2
    assert 'mmcals.compat:' not in result.stdout + result.stderr  # DEBUG only


# Checkpoint safety (issue: safe by default) ------------------------------------------------
def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _malicious(path, marker, base):
    from test_checkpoint import write_malicious_checkpoint
    write_malicious_checkpoint(path, marker, torch.load(base, weights_only=True))


@pytest.mark.parametrize('how', ['test', 'resume', 'load_from'])
def test_a_checkpoint_that_runs_code_is_refused_unless_trusted(trained, tiny_cityscapes,
                                                                tmp_path, how):
    work_dir, _ = trained
    evil, marker = tmp_path / 'evil.pth', tmp_path / 'marker'
    _malicious(evil, marker, work_dir / 'iter_4.pth')
    data = [*cityscapes_options(tiny_cityscapes), 'val_dataloader.dataset.indices=1']
    if how == 'test':
        args = ['test.py', TINY, evil, '--work-dir', tmp_path / 'wd', '--cfg-options', *data]
    elif how == 'resume':  # max_iters as in the checkpoint: nothing left to train
        args = ['train.py', TINY, '--resume', evil, '--work-dir', tmp_path / 'wd',
                '--cfg-options', *data]
    else:
        args = ['train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options', *data,
                f'load_from={evil}', 'train_cfg.max_iters=1']
    # The refusal comes before a runner is built: in-process except once, as a shell sees it.
    refuse = run_tool if how == 'test' else run_tool_here
    line = _one_line_error(refuse(*args, env={'MMCALS_TRUST_CHECKPOINTS': None}), str(evil),
                           'full unpickling', '--trust-checkpoint', 'MMCALS_TRUST_CHECKPOINTS=1')
    assert 'refused' in line
    assert not marker.exists() and not osp.exists(tmp_path / 'wd')
    # Trusted (the flag on test/resume, the environment variable for load_from): it loads.
    flag = ['--trust-checkpoint', '--log-level', 'DEBUG'] if how != 'load_from' else []
    trusted = _ok(run_tool(*args, *flag,
                           env={'MMCALS_TRUST_CHECKPOINTS': '1' if how == 'load_from' else None}))
    assert marker.exists(), trusted.stdout[-2000:]
    if how == 'test':  # --log-level DEBUG shows each stack fix that mmcals applied
        fixes = [line for line in trusted.stdout.splitlines() if 'mmcals.compat:' in line]
        assert any('pkg_resources' in line for line in fixes), trusted.stdout[-2000:]
        import mmcals.compat
        if 'mmcv_ext' in mmcals.compat.applied_fixes():
            assert any('stand-in mmcv._ext' in line for line in fixes)


def _ten_class_checkpoint(source, path):
    """``source`` with its classifiers cut to 10 classes, as a 10-class model would have."""
    checkpoint = torch.load(source, weights_only=True)
    for key in list(checkpoint['state_dict']):
        if 'conv_seg' in key:
            checkpoint['state_dict'][key] = checkpoint['state_dict'][key][:10].clone()
    torch.save(checkpoint, path)


@pytest.mark.parametrize('how', ['test', 'resume', 'load_from'])
def test_a_mismatched_checkpoint_stops_before_any_step(trained, tiny_cityscapes, tmp_path,
                                                        how):
    work_dir, _ = trained
    ten = tmp_path / 'ten.pth'
    _ten_class_checkpoint(work_dir / 'iter_4.pth', ten)
    data = cityscapes_options(tiny_cityscapes)
    args = {'test': ['test.py', TINY, ten, '--cfg-options', *data],
            'resume': ['train.py', TINY, '--resume', ten, '--cfg-options', *data,
                       'train_cfg.max_iters=6'],
            'load_from': ['train.py', TINY, '--cfg-options', *data, f'load_from={ten}']}[how]
    result = run_tool_here(*args, '--work-dir', tmp_path / 'wd')  # ends before a runner
    _one_line_error(result, str(ten), 'does not fit the model', '--allow-partial',
                    'decode_head.conv_seg.weight is 10x128x1x1 in the checkpoint but '
                    '19x128x1x1 in the model')
    log = result.stdout + result.stderr
    assert 'Iter(train)' not in log and 'Iter(val)' not in log and 'Iter(test)' not in log
    assert not osp.exists(tmp_path / 'wd')  # nothing that looks like a run is left


def test_allow_partial_loads_what_fits_and_logs_the_rest(trained, tiny_cityscapes, tmp_path):
    work_dir, _ = trained
    ten = tmp_path / 'ten.pth'
    _ten_class_checkpoint(work_dir / 'iter_4.pth', ten)
    result = _ok(run_tool('test.py', TINY, ten, '--allow-partial', '--work-dir', tmp_path,
                          '--cfg-options', *cityscapes_options(tiny_cityscapes),
                          'test_dataloader.dataset.indices=1'))
    log = result.stdout + result.stderr
    skipped = [line for line in log.splitlines() if '--allow-partial: loaded' in line]
    assert len(skipped) == 1 and 'decode_head.conv_seg.weight' in skipped[0]
    assert 'decode_head.conv_seg.bias' in skipped[0] and 'backbone' not in skipped[0]


def test_checkpoints_of_the_tools_load_weights_only(trained):
    work_dir, _ = trained
    checkpoint = torch.load(work_dir / 'iter_4.pth', weights_only=True)  # no allow-list
    assert checkpoint['meta']['iter'] == 4 and checkpoint['message_hub']['log_scalars']
