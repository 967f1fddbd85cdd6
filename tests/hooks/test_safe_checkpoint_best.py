"""SafeCheckpointHook with ``save_best``: a best checkpoint is never half-written or lost.

mmengine's own best-checkpoint logic runs (choice of the best, names, message hub); a stand-in
runner records the files that exist while each checkpoint is written and can fail mid-write,
as a run killed during the save would.
"""
import os
import uuid

import pytest
from mmengine.fileio import get_file_backend
from mmengine.logging import MessageHub, MMLogger

from mmcals.hooks.checkpoint_hook import SafeCheckpointHook


class KilledDuringSave(Exception):
    pass


class StandInRunner:
    def __init__(self, work_dir):
        self.epoch, self.iter, self.work_dir = 0, 0, str(work_dir)
        self.message_hub = MessageHub.get_instance(f'best-{uuid.uuid4()}')
        self.logger = MMLogger.get_instance(f'best-{uuid.uuid4()}')
        self.fail_on = None
        self.present_while_writing = {}

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        self.present_while_writing[filename] = sorted(os.listdir(out_dir))
        with open(os.path.join(out_dir, filename), 'wb') as f:
            f.write(b'first half ')
            if filename == self.fail_on:
                raise KilledDuringSave(filename)
            f.write(b'second half')


@pytest.fixture
def hook_and_runner(tmp_path):
    hook = SafeCheckpointHook(interval=1, by_epoch=False, save_best='mIoU', rule='greater')
    hook.out_dir, hook.file_backend = str(tmp_path), get_file_backend(str(tmp_path))
    return hook, StandInRunner(tmp_path)


def _best_files(path):
    return sorted(name for name in os.listdir(path) if name.startswith('best_'))


def _validate(hook, runner, iteration, miou):
    runner.iter = iteration
    hook._save_best_checkpoint(runner, {'mIoU': miou})


def test_the_previous_best_stays_until_the_new_one_is_complete(hook_and_runner, tmp_path):
    hook, runner = hook_and_runner
    _validate(hook, runner, 1, 10.0)
    assert _best_files(tmp_path) == ['best_mIoU_iter_1.pth']
    _validate(hook, runner, 2, 20.0)
    # written through a side file while the old best was still there, which then went
    assert runner.present_while_writing['best_mIoU_iter_2.pth.partial'] == [
        'best_mIoU_iter_1.pth']
    assert _best_files(tmp_path) == ['best_mIoU_iter_2.pth']
    assert (tmp_path / 'best_mIoU_iter_2.pth').read_bytes() == b'first half second half'
    assert runner.message_hub.get_info('best_ckpt') == str(tmp_path / 'best_mIoU_iter_2.pth')
    _validate(hook, runner, 3, 15.0)  # not better: nothing written
    assert 'best_mIoU_iter_3.pth.partial' not in runner.present_while_writing
    assert _best_files(tmp_path) == ['best_mIoU_iter_2.pth']


def test_killed_while_writing_a_new_best_keeps_the_previous_one(hook_and_runner, tmp_path):
    hook, runner = hook_and_runner
    _validate(hook, runner, 1, 10.0)
    runner.fail_on = 'best_mIoU_iter_2.pth.partial'
    with pytest.raises(KilledDuringSave):
        _validate(hook, runner, 2, 20.0)
    # the complete previous best is kept; the half-written new one is only a .partial file
    # (removed when training starts again), never a best_*.pth
    assert _best_files(tmp_path) == ['best_mIoU_iter_1.pth', 'best_mIoU_iter_2.pth.partial']
    assert (tmp_path / 'best_mIoU_iter_1.pth').read_bytes() == b'first half second half'
    # the runner and the file backend are themselves again
    assert 'save_checkpoint' not in vars(runner) and 'remove' not in vars(hook.file_backend)


def test_other_checkpoints_are_written_as_before(hook_and_runner, tmp_path):
    hook, runner = hook_and_runner
    hook.last_ckpt = str(tmp_path / 'iter_1.pth')  # a periodic checkpoint exists: rewritten
    _validate(hook, runner, 1, 10.0)
    assert sorted(runner.present_while_writing) == ['best_mIoU_iter_1.pth.partial',
                                                    'iter_1.pth.partial']
    assert sorted(os.listdir(tmp_path)) == ['best_mIoU_iter_1.pth', 'iter_1.pth',
                                            'last_checkpoint']
