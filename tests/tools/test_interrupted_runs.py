"""Runs that are killed, diverge, or end: no progress is lost and nothing wrong is kept."""
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
from tooling import REPO, cityscapes_options, run_tool

TINY = osp.join(REPO, 'tests', 'configs', 'deeplabv3_r18_tiny_cityscapes.py')
TINY_CALS = osp.join(REPO, 'tests', 'configs', 'deeplabv3_tiny_cals_cityscapes.py')


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _slow_config(tmp_path, checkpoint_options):
    config = tmp_path / 'slow.py'
    config.write_text(f"_base_ = '{TINY}'\n"
                      "custom_imports = dict(imports=['mmcals', 'slow_save'])\n"
                      f'default_hooks = dict(checkpoint=dict({checkpoint_options}))\n')
    return config


def _kill_while_saving(config, options, name, work_dir):
    """Train ``config`` and SIGKILL it once the save of ``name`` has written some bytes (to
    ``name`` itself or to its ``.partial`` file)."""
    env = dict(os.environ, PYTHONPATH=osp.join(REPO, 'tests'), MMCALS_TEST_SLOW_SAVE=name,
               OMP_NUM_THREADS='1')
    process = subprocess.Popen([sys.executable, osp.join(REPO, 'tools', 'train.py'), config,
                                *map(str, options)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watched = (work_dir / name, work_dir / f'{name}.partial')
    deadline = time.time() + 400
    while not any(path.exists() and path.stat().st_size > 0 for path in watched):
        assert process.poll() is None and time.time() < deadline, 'the run ended before the save'
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_while_saving_with_max_keep_ckpts_1_keeps_the_previous_checkpoint(
        tiny_cityscapes, tmp_path):
    config = _slow_config(tmp_path, 'max_keep_ckpts=1')
    options = ['--work-dir', tmp_path, '--cfg-options', *cityscapes_options(tiny_cityscapes),
               'val_dataloader.dataset.indices=1', 'train_cfg.max_iters=2',
               'default_hooks.checkpoint.interval=1']
    _kill_while_saving(config, options, 'iter_2.pth', tmp_path)
    partial = tmp_path / 'iter_2.pth.partial'
    # Killed mid-write: the previous checkpoint is still there and named as the latest.
    assert (tmp_path / 'iter_1.pth').is_file() and not (tmp_path / 'iter_2.pth').exists()
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'iter_1.pth')
    torch.load(tmp_path / 'iter_1.pth', weights_only=True)  # complete and loadable

    result = _ok(run_tool('train.py', config, '--resume', *options,
                          env={'PYTHONPATH': osp.join(REPO, 'tests'),
                               'MMCALS_TEST_SLOW_SAVE': None}))
    log = result.stdout + result.stderr
    assert 'resumed epoch: 0, iter: 1' in log
    assert f'Removed {partial}' in log
    assert not partial.exists() and (tmp_path / 'iter_2.pth').is_file()
    assert not (tmp_path / 'iter_1.pth').exists()  # max_keep_ckpts=1, once iter_2 was complete
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'iter_2.pth')
    assert torch.load(tmp_path / 'iter_2.pth', weights_only=True)['meta']['iter'] == 2


def test_killed_while_saving_the_best_checkpoint_leaves_no_best_file(tiny_cityscapes, tmp_path):
    config = _slow_config(tmp_path, "save_best='mIoU'")
    options = ['--work-dir', tmp_path, '--cfg-options', *cityscapes_options(tiny_cityscapes),
               'val_dataloader.dataset.indices=1', 'train_cfg.max_iters=1',
               'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1']
    _kill_while_saving(config, options, 'best_mIoU_iter_1.pth', tmp_path)
    # Killed while writing the best checkpoint: nothing named best_*.pth, the periodic
    # checkpoint before it complete.
    assert not list(tmp_path.glob('best_*.pth'))
    torch.load(tmp_path / 'iter_1.pth', weights_only=True)


def test_divergence_stops_at_the_first_non_finite_loss(tiny_cityscapes, tmp_path):
    result = run_tool('train.py', TINY, '--work-dir', tmp_path, '--cfg-options',
                      *cityscapes_options(tiny_cityscapes), 'optim_wrapper.optimizer.lr=1e6',
                      'default_hooks.checkpoint.interval=1', 'train_cfg.val_interval=100')
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    line = errors[0]
    assert 'training diverged' in line and 'lower the learning rate' in line
    iteration = int(line.split('at iteration ')[1].split(';')[0])
    assert 1 <= iteration <= 4
    # No checkpoint of the diverged iteration; the one named is the last one written.
    assert not (tmp_path / f'iter_{iteration}.pth').exists()
    if iteration > 1:
        assert f'last good checkpoint is {tmp_path / f"iter_{iteration - 1}.pth"}' in line
        assert (tmp_path / f'iter_{iteration - 1}.pth').is_file()
    else:
        assert 'no checkpoint was saved' in line
    assert f'Iter(train) [{iteration + 1}/' not in result.stdout


def _cals_run(work_dir, data, max_iters, resume=False):
    args = ['train.py', TINY_CALS, '--work-dir', work_dir, '--cfg-options',
            *cityscapes_options(data), f'train_cfg.max_iters={max_iters}',
            'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
            'val_dataloader.dataset.indices=1']
    return _ok(run_tool(*args, *(['--resume'] if resume else [])))


def _cals_buffers(state_dict):
    return {k: v for k, v in state_dict.items() if k.endswith(('lambda_', 'rho'))}


@pytest.fixture(scope='module')
def cals_runs(tiny_cityscapes, tmp_path_factory):
    """An uninterrupted 2-iteration CALS run, and a 1-iteration one resumed to 2."""
    whole, parts = tmp_path_factory.mktemp('whole'), tmp_path_factory.mktemp('parts')
    _cals_run(whole, tiny_cityscapes, 2)
    _cals_run(parts, tiny_cityscapes, 1)
    first = torch.load(parts / 'iter_1.pth', weights_only=True)
    history = json.load(open(parts / 'cals_history.json'))['losses']
    resumed = _cals_run(parts, tiny_cityscapes, 2, resume=True)
    return whole, parts, first, history, resumed.stdout + resumed.stderr


def test_the_final_checkpoint_holds_the_last_multiplier_update(cals_runs):
    _, _, first, history, _ = cals_runs
    buffers = _cals_buffers(first['state_dict'])
    assert buffers
    # mmengine saved iter_1.pth before the validation after iteration 1; the λ/ρ of that
    # validation's update (the last entry of cals_history.json) must be in it all the same.
    assert first['cals_hook']['validated_at'] == ['iter', 1]
    assert history.keys() == {'decode_head', 'auxiliary_head'}
    for label, entries in history.items():
        assert entries[-1]['iter'] == 1
        for name, suffix in (('lambda', 'lambda_'), ('rho', 'rho')):
            saved = next(v for k, v in buffers.items()
                         if k.startswith(label + '.') and k.endswith(suffix))
            assert torch.equal(torch.tensor(entries[-1][name], dtype=saved.dtype), saved)


def test_resuming_from_the_final_checkpoint_is_bit_identical(cals_runs):
    whole, parts, _, _, log = cals_runs
    # The final checkpoint already holds its validation's update: none is redone.
    assert 'resumed epoch: 0, iter: 1' in log and 'saved before that validation' not in log
    a = torch.load(whole / 'iter_2.pth', weights_only=True)
    b = torch.load(parts / 'iter_2.pth', weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key in a['state_dict']:
        assert torch.equal(a['state_dict'][key], b['state_dict'][key]), key
    assert _cals_buffers(a['state_dict'])
    assert a['cals_hook']['validated_at'] == b['cals_hook']['validated_at'] == ['iter', 2]
    assert json.dumps(a['cals_hook']['history'], sort_keys=True) == json.dumps(
        b['cals_hook']['history'], sort_keys=True)
    files = [json.load(open(run / 'cals_history.json'))['losses'] for run in (whole, parts)]
    assert files[0].keys() == files[1].keys()
    for label in files[0]:
        assert [(e['iter'], e['lambda'], e['rho']) for e in files[0][label]] == [
            (e['iter'], e['lambda'], e['rho']) for e in files[1][label]]
