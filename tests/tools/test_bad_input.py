"""Bad input to the tools: one line on stderr naming the problem, exit code 2, nothing written.

Checks that end before a runner is built run the tool's ``main`` in this process
(``run_tool_here``, same code path, no new interpreter); ``test_missing_config`` keeps a real
subprocess to check what a shell sees, and so do the failures that happen inside mmengine.
"""
import os
import os.path as osp
import socket

import pytest
import torch
from inprocess_tool import run_tool_here
from tiny_data import make_broken_cityscapes
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')
TINY_CALS = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')


def _one_line_error(result, *needles, after_run=False):
    """Exit 2 and one ``error:`` line on stderr holding ``needles``; with ``after_run`` (the
    runner was built) the libraries' own warnings may come before it."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert after_run or len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0]
    assert 'Traceback' not in result.stderr
    return errors[0]


def test_missing_config(tmp_path):
    result = run_tool('train.py', tmp_path / 'nope.py', '--work-dir', tmp_path / 'wd')
    _one_line_error(result, 'config file', 'nope.py', 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_unreadable_config_value(tmp_path):
    config = tmp_path / 'bad.py'
    config.write_text(f"_base_ = '{TINY}'\nval_evaluator = dict(type='IoUMetric')\n")
    result = run_tool_here('train.py', config, '--work-dir', tmp_path / 'wd')
    _one_line_error(result, 'bad.py', 'could not be read')
    assert not osp.exists(tmp_path / 'wd')


def test_missing_data_root_names_path_and_layout(tmp_path):
    missing = tmp_path / 'no_cityscapes'
    result = run_tool_here('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(missing))
    line = _one_line_error(result, str(missing), 'does not exist')
    assert 'leftImg8bit/train/' in line and 'gtFine/train/' in line and 'data_root=' in line
    assert not osp.exists(tmp_path / 'wd')


def test_missing_split_folder(tiny_cityscapes, tmp_path):
    result = run_tool_here('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes),
                      'val_dataloader.dataset.data_prefix.img_path=leftImg8bit/nosplit')
    _one_line_error(result, osp.join(tiny_cityscapes, 'leftImg8bit/nosplit'))
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_missing_checkpoint_for_training(tiny_cityscapes, tmp_path, how):
    missing = tmp_path / 'missing.pth'
    extra = (['--resume', missing, '--cfg-options'] if how == 'resume'
             else ['--cfg-options', f'load_from={missing}'])
    result = run_tool_here('train.py', TINY, '--work-dir', tmp_path / 'wd', *extra,
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, str(missing), 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_missing_checkpoint_for_testing(tiny_cityscapes, tmp_path):
    missing = tmp_path / 'missing.pth'
    result = run_tool_here('test.py', TINY, missing, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, 'checkpoint', str(missing), 'does not exist')
    assert not osp.exists(tmp_path / 'wd')


def test_tta_with_the_calibration_metric_is_refused(tiny_cityscapes, tmp_path):
    checkpoint = tmp_path / 'any.pth'
    checkpoint.write_bytes(b'never read: the check comes first')
    result = run_tool_here('test.py', TINY, checkpoint, '--tta', '--work-dir', tmp_path / 'wd',
                      '--cfg-options', *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, '--tta', 'PixelCalibrationMetric')
    assert not osp.exists(tmp_path / 'wd')


def test_pytorch_launcher_outside_torchrun(tiny_cityscapes, tmp_path):
    env = {name: None for name in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR')}
    result = run_tool_here('train.py', TINY, '--launcher', 'pytorch', '--work-dir', tmp_path / 'wd',
                      '--cfg-options', *cityscapes_options(tiny_cityscapes), env=env)
    _one_line_error(result, '--launcher pytorch', 'RANK', 'dist_train.sh')
    assert not osp.exists(tmp_path / 'wd')
    result = run_tool_here('test.py', TINY, tmp_path / 'any.pth', '--launcher', 'pytorch',
                      '--work-dir', tmp_path / 'wd', env=env)
    line = _one_line_error(result, '--launcher pytorch', 'dist_test.sh CONFIG CHECKPOINT')
    assert 'dist_train.sh' not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp is refused only without CUDA')
def test_amp_without_cuda(tiny_cityscapes, tmp_path):
    result = run_tool_here('train.py', TINY, '--amp', '--work-dir', tmp_path / 'wd',
                           '--cfg-options', *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, '--amp needs a CUDA device')
    assert not osp.exists(tmp_path / 'wd')


def test_dist_scripts_need_their_arguments():
    for script in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh'):
        result = run_tool(script)
        assert result.returncode == 2 and 'usage:' in result.stderr


@pytest.fixture(scope='module')
def untrained_checkpoint(tmp_path_factory):
    """The tiny model's initial weights, written as tools/test.py expects."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    import mmcals  # noqa: F401  (registers the models' parts)
    cfg = Config.fromfile(TINY)
    path = tmp_path_factory.mktemp('untrained') / 'init.pth'
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, path)
    return path


def test_empty_dataset_folder_says_where_it_looked(tiny_cityscapes, tmp_path):
    root = tmp_path / 'empty'
    for folder in ('leftImg8bit/train', 'gtFine/train', 'leftImg8bit/val', 'gtFine/val'):
        os.makedirs(root / folder)
    result = run_tool_here('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(root))
    _one_line_error(result, 'has no samples', str(root / 'leftImg8bit/train'),
                    '_leftImg8bit.png')
    assert not osp.exists(tmp_path / 'wd')


def test_training_label_outside_the_classes_names_the_file(tmp_path):
    root = str(tmp_path / 'data')
    label = make_broken_cityscapes(root, 'label_200')
    result = run_tool('train.py', TINY, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(root), 'train_dataloader.batch_size=1')
    _one_line_error(result, label, 'value(s) 200', '19 classes', after_run=True)
    assert not osp.exists(tmp_path / 'wd')  # nothing that looks like a run


@pytest.mark.parametrize('damage', ['empty_image', 'truncated_image'])
def test_damaged_image_names_the_file(untrained_checkpoint, tmp_path, damage):
    root = str(tmp_path / 'data')
    image = make_broken_cityscapes(root, damage)
    result = run_tool('test.py', TINY, untrained_checkpoint, '--work-dir', tmp_path / 'wd',
                      '--cfg-options', *cityscapes_options(root))
    _one_line_error(result, image, 'empty' if damage == 'empty_image' else 'truncated',
                    after_run=True)
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.parametrize('damage,how', [('empty', 'test'), ('truncated', 'resume'),
                                        ('truncated', 'auto'), ('empty', 'auto')])
def test_damaged_checkpoint_gives_one_line(tiny_cityscapes, untrained_checkpoint, tmp_path,
                                           damage, how):
    work_dir = tmp_path / 'wd'
    checkpoint = tmp_path / 'iter_2.pth'
    data = untrained_checkpoint.read_bytes()
    checkpoint.write_bytes(b'' if damage == 'empty' else data[:len(data) // 3])
    if how == 'auto':  # a work dir whose last_checkpoint names the damaged file
        work_dir.mkdir()
        checkpoint = work_dir / 'iter_2.pth'
        checkpoint.write_bytes(b'' if damage == 'empty' else data[:len(data) // 3])
        (work_dir / 'last_checkpoint').write_text(str(checkpoint))
    before = sorted(os.listdir(work_dir)) if work_dir.exists() else None
    options = ['--work-dir', work_dir, '--cfg-options', *cityscapes_options(tiny_cityscapes)]
    if how == 'test':
        result = run_tool_here('test.py', TINY, checkpoint, *options)
    else:
        resume = ['--resume'] + ([checkpoint] if how == 'resume' else [])
        result = run_tool_here('train.py', TINY, *resume, *options)
    _one_line_error(result, str(checkpoint), damage, 'use an earlier checkpoint')
    assert (sorted(os.listdir(work_dir)) if work_dir.exists() else None) == before


def test_cals_hook_on_validation_needs_a_validation_loop(tiny_cityscapes, tmp_path):
    config = tmp_path / 'no_val.py'
    config.write_text(f"_base_ = '{TINY_CALS}'\n"
                      'val_dataloader = None\nval_cfg = None\nval_evaluator = None\n')
    result = run_tool_here('train.py', config, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes)[:1])
    _one_line_error(result, "CALSHook(source='val') needs a validation loop",
                    "source='train'")
    assert not osp.exists(tmp_path / 'wd')


@pytest.mark.parametrize('error', ['penalty', 'num_classes'])
def test_config_errors_leave_no_work_dir(tiny_cityscapes, tmp_path, error):
    loss = "penalty='nope'" if error == 'penalty' else 'num_classes=10'
    config = tmp_path / 'bad_loss.py'
    config.write_text(
        f"_base_ = '{TINY_CALS}'\n"
        'model = dict(decode_head=dict(loss_decode=[\n'
        "    dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),\n"
        f"    dict(type='CALSLoss', {loss}, **({{}} if '{error}' == 'num_classes' "
        "else dict(num_classes=19)))]))\n")
    result = run_tool_here('train.py', config, '--work-dir', tmp_path / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, 'model config', 'nope' if error == 'penalty' else 'num_classes=10')
    assert not osp.exists(tmp_path / 'wd')


def test_unwritable_work_dir(tiny_cityscapes, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    result = run_tool_here('train.py', TINY, '--work-dir', blocker / 'wd', '--cfg-options',
                      *cityscapes_options(tiny_cityscapes))
    _one_line_error(result, '--work-dir', str(blocker), 'choose another')
    if os.geteuid() != 0:  # root may write anywhere: a read-only folder stops only others
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        result = run_tool_here('train.py', TINY, '--work-dir', locked / 'wd', '--cfg-options',
                          *cityscapes_options(tiny_cityscapes))
        _one_line_error(result, '--work-dir', 'not writable')
        assert not osp.exists(locked / 'wd')


def test_busy_port_for_dist_train(tiny_cityscapes, tmp_path):
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_tool('dist_train.sh', TINY, '2', '--work-dir', tmp_path / 'wd',
                          env={'PORT': str(port)})
    _one_line_error(result, f'port {port} is in use', 'PORT=', 'dist_train.sh')
    assert not osp.exists(tmp_path / 'wd')
