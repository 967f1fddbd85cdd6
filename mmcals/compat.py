"""Fixes for the mmengine / mmcv / mmseg stack on current PyTorch.

Each fix addresses one breakage measured in ``shared/docs/stack.md`` and is applied at most
once by :func:`apply`, which ``import mmcals`` calls. Every fix logs at debug level what it
changed, so ``--log-level DEBUG`` shows exactly what mmcals touched.
"""
import importlib.machinery
import importlib.util
import logging
import os
import os.path as osp
import sys
import types
import warnings

import torch

logger = logging.getLogger(__name__)

_applied: set = set()


def _needs_compiled_ops(name: str):
    if name.startswith('__'):  # module protocol lookups (__file__, __path__) must stay absent
        raise AttributeError(name)

    def missing_op(*args, **kwargs):
        raise RuntimeError(
            f'mmcv compiled op {name!r} is not available: this environment has mmcv-lite '
            '(no compiled ops). Install a compiled mmcv 2.1.x to use this model.')

    return missing_op


def install_mmcv_ext_stub() -> bool:
    """Register a stand-in ``mmcv._ext`` when mmcv has no compiled ops (stack.md item 1).

    ``import mmseg.models`` imports ``mmcv.ops`` unconditionally; with mmcv-lite that import
    fails. The stand-in lets the import succeed and raises only when a compiled op is
    *called*. Returns whether the stand-in was installed.
    """
    if 'mmcv_ext' in _applied:
        return True
    try:
        if importlib.util.find_spec('mmcv._ext') is not None:
            return False
    except ImportError:  # mmcv itself missing: nothing to stand in for
        return False
    module = types.ModuleType('mmcv._ext')
    # loader=None keeps pkgutil.find_loader (used by mmengine's revert_sync_batchnorm) working.
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', loader=None)
    module.__getattr__ = _needs_compiled_ops
    sys.modules['mmcv._ext'] = module
    _applied.add('mmcv_ext')
    logger.debug('mmcals.compat: mmcv has no compiled ops; registered a stand-in mmcv._ext '
                 'that raises when a compiled op is called')
    return True


def load_from_trusted_local(filename: str, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    # Full unpickling runs code stored in the file: only load checkpoints you trust.
    return torch.load(filename, map_location=map_location, weights_only=False)


def patch_checkpoint_loading() -> bool:
    """Let mmengine load its own local checkpoints under torch >= 2.6 (stack.md item 2).

    torch >= 2.6 defaults ``torch.load(weights_only=True)``, which rejects the Python objects
    mmengine stores in checkpoints (message hub, history buffers). The local-file loader is
    re-registered to unpickle fully. This runs code from the file: use it with trusted
    checkpoints only. Returns whether the loader was replaced.
    """
    if 'checkpoint' in _applied:
        return True
    major, minor = (int(part) for part in torch.__version__.split('.')[:2])
    if (major, minor) < (2, 6):
        return False
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_trusted_local)
    _applied.add('checkpoint')
    logger.debug('mmcals.compat: local checkpoints are loaded with torch.load('
                 'weights_only=False) (trusted checkpoints only)')
    return True


def patch_cuda_set_device() -> bool:
    """Make ``torch.cuda.set_device`` a no-op on CPU-only builds (stack.md item 3).

    mmengine's ``init_dist`` calls it unconditionally, which raises AttributeError on a CPU
    build of torch. Returns whether the function was replaced.
    """
    if 'set_device' in _applied:
        return True
    if torch.cuda.is_available():
        return False
    original = torch.cuda.set_device

    def set_device(device):
        if torch.cuda.is_available():
            return original(device)
        logger.debug('mmcals.compat: ignored torch.cuda.set_device(%s): no CUDA device', device)

    torch.cuda.set_device = set_device
    _applied.add('set_device')
    logger.debug('mmcals.compat: torch.cuda.set_device is a no-op without CUDA')
    return True


def patch_editable_config_path() -> bool:
    """Resolve ``mmcals::`` configs in an editable install.

    mmengine finds a package's ``.mim/configs`` from its distribution's location, which for an
    editable (PEP 660) install is site-packages, not the checkout. Installed (wheel) copies
    resolve correctly and are left alone. Returns whether the lookup was wrapped.
    """
    if 'editable' in _applied:
        return True
    import mmengine.config.config as mmengine_config
    package_dir = osp.dirname(osp.abspath(__file__))
    original = mmengine_config.get_installed_path
    with warnings.catch_warnings():  # mmengine's lookup imports the deprecated pkg_resources
        warnings.simplefilter('ignore')
        installed = original('mmcals')
    if osp.isdir(osp.join(installed, '.mim', 'configs')):
        return False

    def get_installed_path(package: str) -> str:
        if package == 'mmcals':
            return package_dir
        return original(package)

    mmengine_config.get_installed_path = get_installed_path
    _applied.add('editable')
    logger.debug('mmcals.compat: mmcals:: configs resolve to %s/.mim/configs', package_dir)
    return True


def _save_checkpoint_atomically(original):

    def save_checkpoint(checkpoint, filename, *args, **kwargs):
        if '://' in str(filename):
            return original(checkpoint, filename, *args, **kwargs)
        partial = f'{filename}.partial'
        try:
            original(checkpoint, partial, *args, **kwargs)
            os.replace(partial, filename)
        finally:
            if osp.exists(partial):
                os.remove(partial)

    return save_checkpoint


def patch_atomic_checkpoint_save() -> bool:
    """Write local checkpoints to a side file and rename, so no half-written one is left.

    A run killed while mmengine writes ``iter_N.pth`` would otherwise leave a truncated file
    that ``--resume`` picks up as the latest checkpoint. Returns whether saving was wrapped.
    """
    if 'atomic_save' in _applied:
        return True
    import mmengine.runner.runner as mmengine_runner
    mmengine_runner.save_checkpoint = _save_checkpoint_atomically(mmengine_runner.save_checkpoint)
    _applied.add('atomic_save')
    logger.debug('mmcals.compat: checkpoints are written to <name>.partial, then renamed')
    return True


def adapt_config_to_device(cfg) -> list:
    """Let a config written for GPUs (SyncBN, nccl) run on a machine without CUDA.

    Switches the distributed backend to gloo, SyncBN to BN (with mmengine's SyncBuffersHook to
    keep the ranks' BN statistics equal), and DDP to ``device_ids=None`` (stack.md item 3).
    Changes ``cfg`` in place and returns a description of each change; with CUDA present it
    changes nothing.
    """
    if torch.cuda.is_available():
        return []
    changes = []
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        changes.append(f"backend {dist_cfg.get('backend', 'nccl')}->gloo")
        dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
    if wrapper.get('type', 'MMDistributedDataParallel') in ('MMDistributedDataParallel',
                                                            'DistributedDataParallel'):
        if 'device_ids' not in wrapper or wrapper['device_ids'] is not None:
            changes.append('DDP device_ids=None')
        wrapper['device_ids'] = None
        cfg['model_wrapper_cfg'] = wrapper
    converted = _replace_sync_bn(cfg.get('model', {}))
    if converted:
        changes.append(f'SyncBN->BN in {converted} places')
        # Plain BN keeps per-rank running statistics; mmengine's SyncBuffersHook averages
        # them before each validation and at the end of training (a no-op in one process).
        hooks = cfg.setdefault('custom_hooks', [])
        if not any(hook.get('type') == 'SyncBuffersHook' for hook in hooks):
            hooks.append(dict(type='SyncBuffersHook'))
    if cfg.get('sync_bn'):
        cfg['sync_bn'] = None
        changes.append('sync_bn off')
    return changes


def _replace_sync_bn(node) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def silence_pkg_resources_warning() -> None:
    """mmengine resolves ``mmseg::`` configs through ``pkg_resources`` (setuptools < 81 keeps
    it, stack.md); its deprecation warning is printed once per process and says nothing a
    user can act on."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)


def apply() -> None:
    """Apply every fix that this environment needs; safe to call more than once."""
    silence_pkg_resources_warning()
    install_mmcv_ext_stub()
    patch_checkpoint_loading()
    patch_cuda_set_device()
    patch_editable_config_path()
    patch_atomic_checkpoint_save()
