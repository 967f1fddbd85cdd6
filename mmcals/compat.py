"""Fixes for the mmengine / mmcv / mmseg stack on current PyTorch (``docs/stack.md``).

Two fixes run when ``mmcals`` is imported, because importing mmcals' own modules needs them:
:func:`install_mmcv_ext_stub` (adds the missing ``mmcv._ext`` module, only when mmcv has no
compiled ops) and :func:`patch_editable_config_path` (lets ``mmcals::`` configs resolve from
an editable install; other packages' lookups are unchanged). Nothing else of torch, mmengine
or mmseg is touched at import.

The rest is for mmcals' entry points: :func:`apply_runtime_fixes` (called by ``tools/*.py``,
or once by a user's own script) and :func:`cuda_set_device_optional` (around building a
runner for CPU DDP); safe checkpoint loading and atomic writes live in
:mod:`mmcals.checkpoint` and :class:`mmcals.hooks.SafeCheckpointHook`. Every fix logs what it
is logged at DEBUG level through mmengine's current logger by :func:`apply_runtime_fixes`
(import-time ones included), so ``--log-level DEBUG`` shows it.
"""
import contextlib
import importlib.machinery
import importlib.util
import logging
import os.path as osp
import sys
import types
import warnings

import torch
from mmengine.logging import print_log

_applied: dict = {}  # fix name -> what it changed, in the order applied


def _record(name: str, message: str) -> None:
    # Logged by apply_runtime_fixes, once the entry point has set up its logger: logging
    # here, at import, would create mmengine's default logger as a side effect.
    _applied[name] = message


def applied_fixes() -> dict:
    """``{fix name: what it changed}`` for every fix in effect in this process."""
    return dict(_applied)


def _needs_compiled_ops(name: str):
    if name.startswith('__'):  # module protocol lookups (__file__, __path__) must stay absent
        raise AttributeError(name)

    def missing_op(*args, **kwargs):
        raise RuntimeError(
            f'mmcv compiled op {name!r} is not available: this environment has mmcv-lite '
            '(no compiled ops). Install a compiled mmcv 2.1.x to use this model.')

    return missing_op


def install_mmcv_ext_stub() -> bool:
    """Register a stand-in ``mmcv._ext`` when mmcv has no compiled ops (docs/stack.md, item 1).

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
    _record('mmcv_ext', 'mmcv has no compiled ops; registered a stand-in mmcv._ext that '
            'raises when a compiled op is called')
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
    _record('editable', f'mmcals:: configs resolve to {package_dir}/.mim/configs '
            '(editable install)')
    return True


def adapt_config_to_device(cfg) -> list:
    """Let a config written for GPUs (SyncBN, nccl) run on a machine without CUDA.

    Switches the distributed backend to gloo, SyncBN to BN (with mmengine's SyncBuffersHook to
    keep the ranks' BN statistics equal), and DDP to ``device_ids=None`` (docs/stack.md, item 3).
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
    it, docs/stack.md); its deprecation warning is printed once per process and says nothing a
    user can act on."""
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                            category=UserWarning)


@contextlib.contextmanager
def cuda_set_device_optional():
    """Within the block, ``torch.cuda.set_device`` is a no-op if torch has no CUDA.

    mmengine's ``init_dist`` calls it unconditionally, which raises on a CPU build of torch
    (docs/stack.md, item 3). The tools build their runner (which initialises the process
    group) inside this block; the original function is back afterwards, and with CUDA nothing
    changes.
    """
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.set_device

    def set_device(device):
        print_log(f'mmcals.compat: ignored torch.cuda.set_device({device}): no CUDA device',
                  logger='current', level=logging.DEBUG)

    torch.cuda.set_device = set_device
    try:
        yield
    finally:
        torch.cuda.set_device = original


def apply_runtime_fixes() -> dict:
    """What mmcals' tools do before building a runner; call it once in your own script.

    Silences the ``pkg_resources`` deprecation warning, then logs (DEBUG, through mmengine's
    current logger) every fix in effect, the import-time ones included.

    Returns:
        dict: :func:`applied_fixes`.
    """
    if 'pkg_resources_warning' not in _applied:
        silence_pkg_resources_warning()
        _applied['pkg_resources_warning'] = ("the 'pkg_resources is deprecated' warning of "
                                             'mmengine\'s mmseg:: config lookup is silenced')
    for message in _applied.values():
        print_log(f'mmcals.compat: {message}', logger='current', level=logging.DEBUG)
    return applied_fixes()
