"""Test-only: a slow-writing stand-in for mmengine's checkpoint save (imported through
``custom_imports``), so that a test can kill a run while a checkpoint is being written.

``MMCALS_TEST_SLOW_SAVE=<name>`` makes the save of ``<name>`` (e.g. ``iter_4.pth``) write half
of its bytes, then wait 300 s before writing the rest.
"""
import io
import os
import os.path as osp
import time

import mmengine.runner.runner as runner_module
import torch

_original = runner_module.save_checkpoint
_SLOW = os.environ.get('MMCALS_TEST_SLOW_SAVE', '')


def _slow_save(checkpoint, filename, *args, **kwargs):
    if not _SLOW or not osp.basename(str(filename)).startswith(_SLOW):
        return _original(checkpoint, filename, *args, **kwargs)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    with open(filename, 'wb') as f:
        f.write(data[:len(data) // 2])
        f.flush()
        time.sleep(300)
        f.write(data[len(data) // 2:])


runner_module.save_checkpoint = _slow_save
