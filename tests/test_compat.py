"""Each stack fix of mmcals.compat does what stack.md says, and only where needed."""
import importlib.util
import logging
import os.path as osp
import pkgutil

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer, MessageHub

import mmcals
from mmcals import compat


def test_mmseg_models_import_and_compiled_ops_fail_only_when_called():
    import mmcv.ops
    import mmseg.models  # noqa: F401  (failed on mmcv-lite before the stand-in)
    stub_installed = 'mmcv_ext' in compat._applied
    real_ops = importlib.util.find_spec('mmcv._ext') is not None and not stub_installed
    if real_ops:
        pytest.skip('a compiled mmcv is installed: the stand-in is (correctly) not used')
    # revert_sync_batchnorm looks the module up with pkgutil; a loader-less spec keeps it working.
    assert pkgutil.find_loader('mmcv._ext') is None
    with pytest.raises(RuntimeError, match='compiled op .* mmcv-lite'):
        mmcv.ops.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2))


def test_stand_in_is_not_installed_over_real_ops(monkeypatch):
    monkeypatch.setattr(compat, '_applied', set())
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: object())
    assert compat.install_mmcv_ext_stub() is False


def test_mmengine_checkpoints_with_python_objects_load(tmp_path):
    """torch >= 2.6 refuses these with weights_only=True; mmengine's loader must not."""
    from mmengine.runner.checkpoint import _load_checkpoint
    hub = MessageHub.get_instance('compat-test')
    hub.update_scalar('train/loss', 1.5)
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict()}, path)
    with pytest.raises(Exception, match='weights_only|Unsupported global'):
        torch.load(path)  # what mmengine would do unpatched on this torch
    loaded = _load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        _load_checkpoint(str(tmp_path / 'missing.pth'), map_location='cpu')


@pytest.mark.skipif(torch.cuda.is_available(), reason='the no-op applies to CPU-only torch')
def test_cuda_set_device_is_a_no_op_without_cuda(caplog):
    with caplog.at_level(logging.DEBUG, logger='mmcals.compat'):
        torch.cuda.set_device(0)
    assert 'ignored torch.cuda.set_device(0)' in caplog.text


def test_fixes_log_once_at_debug_level(monkeypatch, caplog):
    monkeypatch.setattr(compat, '_applied', set())
    monkeypatch.setattr(torch.cuda, 'set_device', torch.cuda.set_device)
    import mmengine.config.config as mmengine_config
    import mmengine.runner.runner as mmengine_runner
    from mmengine.runner.checkpoint import CheckpointLoader
    monkeypatch.setattr(mmengine_config, 'get_installed_path', mmengine_config.get_installed_path)
    monkeypatch.setattr(mmengine_runner, 'save_checkpoint', mmengine_runner.save_checkpoint)
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    with caplog.at_level(logging.DEBUG, logger='mmcals.compat'):
        compat.apply()
        compat.apply()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(messages) == len(set(messages)) and messages
    assert any('weights_only=False' in m for m in messages)


def test_checkpoint_save_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    import mmengine.runner.runner as mmengine_runner

    def write_then_die(checkpoint, filename, *args, **kwargs):
        with open(filename, 'wb') as f:
            f.write(b'half a checkpoint')
        raise OSError('disk full')

    save = compat._save_checkpoint_atomically(write_then_die)
    target = tmp_path / 'iter_8.pth'
    with pytest.raises(OSError, match='disk full'):
        save({}, str(target))
    assert list(tmp_path.iterdir()) == []
    # The real, wrapped save writes the final name only.
    mmengine_runner.save_checkpoint({'x': torch.ones(1)}, str(target))
    assert [p.name for p in tmp_path.iterdir()] == ['iter_8.pth']


def test_gpu_config_is_adapted_for_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(repo, 'configs', 'deeplabv3_cals_cityscapes.py'))
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
