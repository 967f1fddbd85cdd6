"""Loading checkpoints without running code stored in them (``docs/stack.md``, item 2).

A checkpoint is a pickle, and unpickling can call any function the file names. mmcals loads
checkpoints with ``torch.load(weights_only=True)``, whose unpickler admits only tensors,
containers, plain Python values and the globals allow-listed here by name (numpy arrays,
dtypes and scalars), and refuses anything else *before* calling it. Checkpoints written
through :class:`~mmcals.hooks.SafeCheckpointHook` store mmengine's message hub in plain types
(:func:`plain_message_hub`), so they load this way; so do released mmseg weights (plain state
dicts). Other checkpoints load only with explicit trust: ``trust=True`` here,
``--trust-checkpoint`` on the tools, or ``MMCALS_TRUST_CHECKPOINTS=1`` in the environment.

:func:`install_safe_loading` makes an mmengine runner load its ``load_from`` / ``resume``
checkpoint this way and refuse (or, on request, log) checkpoints that do not fit its model.
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import pickle
import re
import types
import zipfile
from collections import OrderedDict
from typing import Callable, Optional

import numpy as np
import torch

TRUST_ENV = 'MMCALS_TRUST_CHECKPOINTS'
TRUST_HINT = f'pass --trust-checkpoint, or set {TRUST_ENV}=1, only if you trust this file'
_PLAIN_HUB = '__mmcals_plain_history_buffer__'


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file and the fix."""


def _numpy_data_globals() -> list:
    """The numpy globals a pickled array, dtype or scalar refers to, by name.

    They rebuild data (an array from its bytes, a dtype from its code); none of them can reach
    arbitrary code. ``builtins.getattr`` (what pickled mmengine ``HistoryBuffer`` objects need)
    is deliberately not among them.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    dtype_classes = [type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG']
    return [multiarray._reconstruct, multiarray.scalar, np.dtype, np.ndarray, *dtype_classes]


def trusted_by_environment() -> bool:
    """Whether ``MMCALS_TRUST_CHECKPOINTS`` asks to trust every checkpoint."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _refused_global(error: Exception) -> str:
    found = re.search(r'GLOBAL ([\w.]+)', str(error))
    return found.group(1) if found else 'an object that is not plain data'


def _is_remote(path: str) -> bool:
    return '://' in path


@contextlib.contextmanager
def _weights_only_forced():
    """Make every ``torch.load`` inside load weights only, whatever its call site asks."""
    previous = os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD')
    os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
        else:
            os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = previous


def check_checkpoint_file(path: str) -> None:
    """Fail with one line when a local checkpoint is missing, empty or visibly truncated.

    Args:
        path (str): The checkpoint file.
    """
    if _is_remote(path):
        return
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint {path} does not exist')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes): it was never written '
                              'completely; use an earlier checkpoint')
    if zipfile.is_zipfile(path):
        return
    with open(path, 'rb') as f:
        head = f.read(4)
    # torch's zip format keeps its index at the end, so a cut-off file is no zip; the legacy
    # format starts with a pickle protocol marker.
    if head[:2] in (b'PK', b'\x80\x02'):
        raise CheckpointError(f'checkpoint {path} is truncated or damaged (no complete torch '
                              'archive): use an earlier checkpoint')


def load_checkpoint_safely(path: str, map_location='cpu', trust: Optional[bool] = None):
    """Load a checkpoint without running code from it, unless it is trusted explicitly.

    Args:
        path (str): Local file, or a URL / ``scheme://`` mmengine knows how to fetch.
        map_location (str | callable): As for ``torch.load``. Default: ``'cpu'``.
        trust (bool, optional): Unpickle fully (runs code the file may carry). None reads
            ``MMCALS_TRUST_CHECKPOINTS``. Default: None.

    Returns:
        The checkpoint as stored (a plain message hub stays plain; see
        :func:`restore_message_hub`).

    Raises:
        CheckpointError: One line naming the file: missing, empty, truncated, or refused
            because only full unpickling could read it.
    """
    path = str(path)
    if trust is None:
        trust = trusted_by_environment()
    check_checkpoint_file(path)
    try:
        if _is_remote(path):
            from mmengine.runner.checkpoint import CheckpointLoader
            guard = contextlib.nullcontext() if trust else _weights_only_forced()
            with guard, torch.serialization.safe_globals(_numpy_data_globals()):
                return CheckpointLoader.load_checkpoint(path, map_location=map_location)
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as error:
        if trust:
            raise CheckpointError(f'checkpoint {path} could not be unpickled: '
                                  f'{str(error).strip().splitlines()[0]}') from error
        raise CheckpointError(
            f'refused to load checkpoint {path}: it can only be read by full unpickling '
            f'(it refers to {_refused_global(error)}), which runs code stored in the file; '
            f'{TRUST_HINT}') from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f'checkpoint {path} could not be read ({first}): it is '
                              'truncated or not a torch checkpoint; use an earlier '
                              'checkpoint') from error


# Message hub in plain types --------------------------------------------------------------
def plain_message_hub(hub_state: dict) -> dict:
    """mmengine's message-hub state with each ``HistoryBuffer`` as tensors and an int.

    ``HistoryBuffer`` objects unpickle only through ``builtins.getattr``; their content is two
    numpy arrays and a length, stored here losslessly (``torch.from_numpy`` keeps dtype and
    bits) so that ``weights_only`` loading reads them. Numpy scalars in the runtime info
    (mmengine's ``eta``) become Python numbers, so that even a plain
    ``torch.load(weights_only=True)`` without numpy allow-listed reads the checkpoint.
    """
    from mmengine.logging import HistoryBuffer
    scalars = OrderedDict()
    for key, buffer in hub_state.get('log_scalars', {}).items():
        if isinstance(buffer, HistoryBuffer):
            logs, counts = buffer.data
            try:
                buffer = {_PLAIN_HUB: True,
                          'log_history': torch.from_numpy(np.array(logs)),
                          'count_history': torch.from_numpy(np.array(counts)),
                          'max_length': int(buffer.max_length)}
            except TypeError:  # non-numeric history: kept as is (loading it needs trust)
                pass
        scalars[key] = buffer
    info = OrderedDict((key, value.item() if isinstance(value, np.generic) else value)
                       for key, value in hub_state.get('runtime_info', {}).items())
    return dict(hub_state, log_scalars=scalars, runtime_info=info)


def restore_message_hub(checkpoint: dict) -> None:
    """Turn a plain message hub of ``checkpoint`` back into ``HistoryBuffer`` objects."""
    from mmengine.logging import HistoryBuffer
    hub = checkpoint.get('message_hub') if isinstance(checkpoint, dict) else None
    if not isinstance(hub, dict):
        return
    for key, value in list(hub.get('log_scalars', {}).items()):
        if isinstance(value, dict) and value.get(_PLAIN_HUB):
            hub['log_scalars'][key] = HistoryBuffer(value['log_history'].numpy(),
                                                    value['count_history'].numpy(),
                                                    value['max_length'])


# Fitting a checkpoint to a model ---------------------------------------------------------
def _shape(tensor) -> str:
    return 'x'.join(str(s) for s in tensor.shape) if hasattr(tensor, 'shape') else 'scalar'


def state_dict_of(checkpoint) -> dict:
    """The state dict inside a checkpoint (mmengine's ``state_dict`` key, or the whole)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        return checkpoint['state_dict']
    return checkpoint


def revised(state_dict: dict, revise_keys) -> OrderedDict:
    """``state_dict`` with each ``(pattern, replacement)`` of ``revise_keys`` applied to keys."""
    result = OrderedDict()
    for key, value in state_dict.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        result[key] = value
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:  # module versions, read by e.g. BatchNorm's loading
        result._metadata = metadata
    return result


def mismatches(model: torch.nn.Module, state_dict: dict) -> dict:
    """Keys of the model missing from ``state_dict``, unexpected ones, and shape mismatches.

    Returns:
        dict: ``missing``, ``unexpected`` (lists of keys) and ``shape`` (list of
        ``(key, checkpoint shape, model shape)``).
    """
    expected = model.state_dict()
    return {
        'missing': [k for k in expected if k not in state_dict],
        'unexpected': [k for k in state_dict if k not in expected],
        'shape': [(k, _shape(state_dict[k]), _shape(v)) for k, v in expected.items()
                  if k in state_dict and hasattr(state_dict[k], 'shape')
                  and tuple(state_dict[k].shape) != tuple(v.shape)],
    }


def describe_mismatches(found: dict, first: int = 2) -> str:
    """The first offending keys of :func:`mismatches`, with shapes, in one line."""
    parts = []
    if found['shape']:
        shown = ', '.join(f'{k} is {c} in the checkpoint but {m} in the model'
                          for k, c, m in found['shape'][:first])
        parts.append(f'{len(found["shape"])} shape mismatches ({shown})')
    for kind in ('missing', 'unexpected'):
        if found[kind]:
            where = 'from the checkpoint' if kind == 'missing' else 'not in the model'
            parts.append(f'{len(found[kind])} {kind} {where} ({", ".join(found[kind][:first])})')
    return '; '.join(parts)


def fit_to_model(model: torch.nn.Module, checkpoint, path: str, allow_partial: bool,
                 revise_keys=((r'^module\.', ''),), log: Optional[Callable] = None) -> dict:
    """Check that a checkpoint fits ``model`` exactly; with ``allow_partial``, drop what does not.

    Args:
        model (nn.Module): The (unwrapped) model to load into.
        checkpoint: The loaded checkpoint (or state dict).
        path (str): Its file, for the messages.
        allow_partial (bool): Load only the matching tensors and log the rest.
        revise_keys: Key rewrites applied first, as mmengine's ``load_checkpoint`` does.
        log (callable, optional): Where ``allow_partial`` reports what it skipped.

    Returns:
        dict: The state dict to load (revised keys; without mismatches if partial).

    Raises:
        CheckpointError: If anything does not fit and ``allow_partial`` is False.
    """
    state_dict = revised(state_dict_of(checkpoint), revise_keys)
    found = mismatches(model, state_dict)
    if not any(found.values()):
        return state_dict
    summary = describe_mismatches(found)
    if not allow_partial:
        raise CheckpointError(
            f'checkpoint {path} does not fit the model: {summary}; use a checkpoint of this '
            'config, or pass --allow-partial to load only the matching tensors')
    for key, _, _ in found['shape']:
        state_dict.pop(key)
    for key in found['unexpected']:
        state_dict.pop(key)
    if log is not None:
        skipped = [k for k, _, _ in found['shape']] + found['unexpected'] + found['missing']
        log(f'--allow-partial: loaded {len(state_dict)} tensors of {path}; skipped '
            f'{summary}. Skipped keys: {", ".join(skipped)}')
    return state_dict


def _load_into_runner(runner, filename, map_location='cpu', strict=False,
                      revise_keys=((r'^module\.', ''),)):
    """What ``Runner.load_checkpoint`` does, reading the file safely and fitting strictly."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    options = runner._mmcals_loading
    checkpoint = options['preloaded'].pop(str(filename), None)
    if checkpoint is None:
        checkpoint = load_checkpoint_safely(filename, map_location, options['trust'])
    restore_message_hub(checkpoint)
    runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if isinstance(model, BaseTTAModel):  # its state dict prefixes the wrapped model's keys
        model = model.module
    state_dict = fit_to_model(model, checkpoint, str(filename), options['allow_partial'],
                              revise_keys, log=runner.logger.warning)
    model.load_state_dict(state_dict, strict=False)
    runner._has_loaded = True
    runner.logger.info(f'Load checkpoint from {filename}')
    return checkpoint


def install_safe_loading(runner, trust: Optional[bool] = None, allow_partial: bool = False,
                         preloaded: Optional[dict] = None) -> None:
    """Make ``runner`` load checkpoints with :func:`load_checkpoint_safely`, fitting strictly.

    Replaces ``load_checkpoint`` on this runner object only (``resume`` and ``load_from`` go
    through it); nothing global changes.

    Args:
        runner (mmengine.runner.Runner): The runner.
        trust (bool, optional): As in :func:`load_checkpoint_safely`. Default: None.
        allow_partial (bool): Load what fits and log the rest instead of refusing. Default:
            False.
        preloaded (dict, optional): ``{path: checkpoint}`` already read (and checked) by the
            caller, used once instead of reading the file again. Default: None.
    """
    runner._mmcals_loading = dict(trust=trust, allow_partial=allow_partial,
                                  preloaded=dict(preloaded or {}))
    runner.load_checkpoint = types.MethodType(_load_into_runner, runner)
