"""mmcals.compat: each stack fix does what docs/stack.md says, only where it is asked for."""
import importlib.util
import os.path as osp
import pkgutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import mmcals
from mmcals import compat

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_import_changes_nothing_outside_mmcals():
    """In a fresh interpreter: mmengine's loader table, torch.cuda.set_device and mmengine's
    save_checkpoint are the very objects they were before ``import mmcals``."""
    probe = '''
import torch, mmengine.runner.runner as runner_module
from mmengine.runner.checkpoint import CheckpointLoader
import mmengine.config.config as config_module
before = (dict(CheckpointLoader._schemes), torch.cuda.set_device,
          runner_module.save_checkpoint, torch.load, set(torch.serialization.get_safe_globals()))
import mmcals, mmseg.models
after = (dict(CheckpointLoader._schemes), torch.cuda.set_device,
         runner_module.save_checkpoint, torch.load, set(torch.serialization.get_safe_globals()))
assert before[0].keys() == after[0].keys(), 'loader prefixes changed'
assert all(before[0][k] is after[0][k] for k in before[0]), 'a checkpoint loader was replaced'
for name, old, new in zip(['set_device', 'save_checkpoint', 'torch.load'], before[1:4],
                          after[1:4]):
    assert old is new, name + ' was replaced'
assert before[4] == after[4], 'torch safe globals changed'
print('UNCHANGED')
'''
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0 and 'UNCHANGED' in result.stdout, result.stderr[-2000:]


def test_mmseg_models_import_and_compiled_ops_fail_only_when_called():
    import mmcv.ops
    import mmseg.models  # noqa: F401  (failed on mmcv-lite before the stand-in)
    stub_installed = 'mmcv_ext' in compat.applied_fixes()
    real_ops = importlib.util.find_spec('mmcv._ext') is not None and not stub_installed
    if real_ops:
        pytest.skip('a compiled mmcv is installed: the stand-in is (correctly) not used')
    # revert_sync_batchnorm looks the module up with pkgutil; a loader-less spec keeps it working.
    assert pkgutil.find_loader('mmcv._ext') is None
    with pytest.raises(RuntimeError, match='compiled op .* mmcv-lite'):
        mmcv.ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2))


def test_stand_in_is_not_installed_over_real_ops(monkeypatch):
    monkeypatch.setattr(compat, '_applied', {})
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: object())
    assert compat.install_mmcv_ext_stub() is False


def test_set_device_is_optional_only_inside_the_block(monkeypatch):
    original = torch.cuda.set_device
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with compat.cuda_set_device_optional():
        assert torch.cuda.set_device is not original
        torch.cuda.set_device(0)  # raises on a CPU build of torch outside the block
    assert torch.cuda.set_device is original


def _logged(capsys, level, name):
    logger = MMLogger.get_instance(name, logger_name=name, log_level=level)
    compat.apply_runtime_fixes()
    text = capsys.readouterr().out
    logger.handlers.clear()
    return text


def test_runtime_fixes_log_each_fix_through_mmengine_at_debug(capsys):
    debug = _logged(capsys, 'DEBUG', 'compat-debug')
    lines = [line for line in debug.splitlines() if 'mmcals.compat:' in line]
    assert len(lines) == len(compat.applied_fixes()) >= 1
    assert any('pkg_resources' in line for line in lines)
    if 'mmcv_ext' in compat.applied_fixes():
        assert any('stand-in mmcv._ext' in line for line in lines)
    assert 'mmcals.compat:' not in _logged(capsys, 'INFO', 'compat-info')


def test_gpu_config_is_adapted_for_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplabv3_cals_cityscapes.py'))
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
    changes = compat.adapt_config_to_device(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', device_ids=None)
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.auxiliary_head.norm_cfg.type == 'BN'
    assert 'SyncBuffersHook' in [hook['type'] for hook in cfg.custom_hooks]
    assert any('SyncBN->BN in 3 places' in c for c in changes)
    assert compat.adapt_config_to_device(cfg) == []  # idempotent


def test_gpu_config_is_untouched_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(model=dict(norm_cfg=dict(type='SyncBN')),
                      env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert compat.adapt_config_to_device(cfg) == []
    assert cfg.model.norm_cfg.type == 'SyncBN' and cfg.env_cfg.dist_cfg.backend == 'nccl'


def test_mmcals_is_a_known_config_package():
    from mmengine.config.utils import MODULE2PACKAGE
    assert MODULE2PACKAGE['mmcals'] == 'mmcals'
    assert mmcals.__version__
