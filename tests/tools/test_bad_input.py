"""Bad input to the tools: one line on stderr naming the problem, exit code 2, nothing written."""
import os.path as osp

import pytest
import torch
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0]
    assert 'Traceback' not in result.stderr
    return lines[0]


def test_missing_config(tmp_path):
    result = run_tool('train.py', tmp_path / 'nope.py', '--work-dir', tmp_path / 'wd')
    _one_line_error(result, 'config file', 'nope.py', 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_unreadable_config_value(tmp_path):
    config = tmp_path / 'bad.py'
    config.write_text(f"_base_ = '{TINY}'\nval_evaluator = dict(type='IoUMetric')\n")
    result = run_tool('train.py', config, '--work-dir', tmp_path / 'wd')
    _one_line_error(result, 'bad.py', 'could not be read')
    assert not osp.exists(tmp_path / 'wd')


def test_missing_data_root_names_path_and_layout(tmp_path):
    missing = tmp_path / 'no_cityscapes'
    result = run_tool('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(missing))
    line = _one_line_error(result, str(missing), 'does not exist')
    assert 'leftImg8bit/train/' in line and 'gtFine/train/' in line and 'data_root=' in line
    assert not osp.exists(tmp_path / 'wd')


def test_missing_split_folder(tiny_cityscapes, tmp_path):
    result = run_tool('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes),
                      'val_dataloader.dataset.data_prefix.img_path=leftImg8bit/nosplit')
    _one_line_error(result, osp.join(tiny_cityscapes, 'leftImg8bit/nosplit'))
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_missing_checkpoint_for_training(tiny_cityscapes, tmp_path, how):
    missing = tmp_path / 'missing.pth'
    extra = (['--resume', missing, '--cfg-options'] if how == 'resume'
             else ['--cfg-options', f'load_from={missing}'])
    result = run_tool('train.py', TINY, '--work-dir', tmp_path / 'wd', *extra,
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, str(missing), 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_missing_checkpoint_for_testing(tiny_cityscapes, tmp_path):
    missing = tmp_path / 'missing.pth'
    result = run_tool('test.py', TINY, missing, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, 'checkpoint', str(missing), 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_tta_with_the_calibration_metric_is_refused(tiny_cityscapes, tmp_path):
    checkpoint = tmp_path / 'any.pth'
    checkpoint.write_bytes(b'never read: the check comes first')
    result = run_tool('test.py', TINY, checkpoint, '--tta', '--work-dir', tmp_path / 'wd',
                      '--cfg-options', *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, '--tta', 'PixelCalibrationMetric')
    assert not osp.exists(tmp_path / 'wd')


def test_pytorch_launcher_outside_torchrun(tiny_cityscapes, tmp_path):
    env = {name: None for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR')}
    result = run_tool('train.py', TINY, '--launcher', 'pytorch', '--work-dir', tmp_path / 'wd',
                      '--cfg-options', *cityscapes_options(tiny_cityscapes), env=env)
    _one_line_error(result, '--launcher pytorch', 'RANK', 'dist_train.sh')
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp is refused only without CUDA')
def test_amp_without_cuda(tiny_cityscapes, tmp_path):
    result = run_tool('train.py', TINY, '--amp', '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, '--amp needs a CUDA device')
    assert not osp.exists(tmp_path / 'wd')


def test_dist_scripts_need_their_arguments():
    for script in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh'):
        result = run_tool(script)
        assert result.returncode == 2 and 'usage:' in result.stderr
