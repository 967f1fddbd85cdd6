"""What ``tools/train.py`` and ``tools/test.py`` share: argument checks and runner set-up.

Bad input ends the tools with one line on stderr (``error: ...``) naming the problem and the
fix, and exit code 2, before anything is written where that can be checked up front; what can
only fail once the runner exists (a checkpoint that does not fit the model, a bad label in the
data) leaves nothing that looks like a run. Set ``MMCALS_TRACEBACK=1`` to see the traceback
instead.

A user's own script gets the tools' safety by building its runner with :func:`build_runner`
(after :func:`add_training_checks` for training).
"""
import argparse
import contextlib
import copy
import importlib.util
import inspect
import os
import os.path as osp
import re
import shutil
import sys
import tempfile
import urllib.error
import warnings
from typing import Callable, Iterable, Optional

import torch
from mmengine.config import Config, DictAction

from . import compat
from .checkpoint import CheckpointError, fit_to_model, install_safe_loading, load_checkpoint_safely
from .compat import adapt_config_to_device
from .hooks.divergence_hook import TrainingDiverged

LOG_LEVELS = ('CRITICAL', 'ERROR', 'WARNING', 'INFO', 'DEBUG')

TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
SLURM_VARIABLES = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


# Errors whose message is already the one line to show (no "where" hint needed).
_SELF_EXPLAINING = (UsageError, CheckpointError, TrainingDiverged)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return repr(error)
    # A DataLoader worker re-raises with the original traceback text, whose last line is
    # "SomeError: <message>".
    found = re.match(r'^[A-Za-z_][\w.]*(?:Error|Exception): (.+)$', lines[-1])
    return found.group(1) if found else lines[-1]


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's ``main``, turning bad input into one line on stderr and exit code 2."""
    try:
        main()
    except (*_SELF_EXPLAINING, FileNotFoundError, ValueError) as error:
        if os.environ.get('MMCALS_TRACEBACK'):
            raise
        explained = isinstance(error, _SELF_EXPLAINING) or type(error).__module__.startswith(
            'mmcals')
        hint = '' if explained else ' (MMCALS_TRACEBACK=1 shows where)'
        sys.stdout.flush()
        print(f'error: {_one_line(error)}{hint}', file=sys.stderr)
        sys.exit(2)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the folder for logs, checkpoints and results')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. train_dataloader.dataset.data_root=data/cs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (tools/dist_*.sh use pytorch)')
    parser.add_argument('--log-level', choices=LOG_LEVELS, default='INFO', type=str.upper,
                        help="mmengine's log level; DEBUG also lists each stack fix applied")
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='load checkpoints that need full unpickling (this runs code stored in the file: '
             'only for files you trust); the environment variable MMCALS_TRUST_CHECKPOINTS=1 '
             'does the same')
    parser.add_argument(
        '--allow-partial', action='store_true',
        help='load a checkpoint that does not fit the model exactly: only the matching '
             'tensors, logging what was skipped (e.g. to fine-tune another head)')
    # torchrun passes --local-rank to old-style scripts; accept both spellings.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


# --vis-backend names -> mmengine's visualizer backends.
VIS_BACKENDS = {'local': 'LocalVisBackend', 'tensorboard': 'TensorboardVisBackend'}


def add_vis_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--vis-backend', nargs='+', action='extend', default=[], choices=sorted(VIS_BACKENDS),
        metavar='NAME',
        help='also send the logged scalars (losses, CALS multipliers and diagnostics, metrics) '
             'and the reliability diagram of each evaluation to these visualizer backends: '
             'local, tensorboard (event files under <work_dir>/<timestamp>/vis_data)')


def add_vis_backends(cfg: Config, names: Iterable[str]) -> None:
    """Append the ``--vis-backend`` backends missing from ``cfg.visualizer.vis_backends``."""
    names = list(names)
    if not names:
        return
    if 'tensorboard' in names and importlib.util.find_spec('tensorboard') is None:
        raise UsageError('--vis-backend tensorboard needs the tensorboard package: '
                         "pip install 'mmcals[tensorboard]'")
    # mmengine's runner uses a LocalVisBackend when the config names no visualizer.
    visualizer = dict(cfg.get('visualizer') or dict(
        type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]))
    backends = list(visualizer.get('vis_backends') or [])
    present = {backend.get('type') for backend in backends}
    for name in names:
        if VIS_BACKENDS[name] not in present:
            backends.append(dict(type=VIS_BACKENDS[name]))
            present.add(VIS_BACKENDS[name])
    visualizer['vis_backends'] = backends
    cfg.visualizer = visualizer  # assigned whole: Config.setdefault copies a new value


def setup_logging(log_level: str = 'INFO') -> None:
    """Make mmengine's current logger show ``log_level`` and log the stack fixes in effect.

    The runner builds its own logger later, at the config's ``log_level`` (the tools set it
    from ``--log-level``); this one covers what happens before.
    """
    from mmengine.logging import MMLogger
    if MMLogger.check_instance_created('mmcals'):  # a second tool run in one process
        logger = MMLogger.get_instance('mmcals')
        for handler in logger.handlers:
            handler.setLevel(log_level)
    else:
        MMLogger.get_instance('mmcals', logger_name='mmcals', log_level=log_level)
    compat.apply_runtime_fixes()


def check_launcher(launcher: str, script: str = 'train') -> None:
    """Fail early when a distributed launcher is named but its environment is missing.

    Args:
        launcher (str): ``--launcher``.
        script (str): ``'train'``, ``'test'``, or the path of another tool under ``tools/``
            (e.g. ``'analysis/logit_gaps.py'``): which launcher command to suggest.
    """
    required = {'pytorch': TORCHRUN_VARIABLES, 'slurm': SLURM_VARIABLES}.get(launcher, ())
    missing = [name for name in required if name not in os.environ]
    if missing:
        usage = {'test': 'dist_test.sh CONFIG CHECKPOINT GPUS',
                 'train': 'dist_train.sh CONFIG GPUS'}.get(
                     script, f'dist_run.sh {script} GPUS CONFIG CHECKPOINT')
        hint = (f'start it with tools/{usage} (torchrun)'
                if launcher == 'pytorch' else 'start it with tools/slurm_train.sh under srun')
        raise UsageError(f'--launcher {launcher} needs the variables its launcher sets '
                         f'({", ".join(missing)} missing): {hint}, or drop --launcher')


def load_config(path: str, cfg_options: Optional[dict]) -> Config:
    if not osp.isfile(path):
        raise UsageError(f'config file {path} does not exist')
    # Resolving mmseg:: bases imports pkg_resources, whose deprecation warning would be the
    # tool's first line of output (docs/stack.md); tools that skip setup_logging get it too.
    compat.silence_pkg_resources_warning()
    try:
        cfg = Config.fromfile(path)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
    except (KeyError, TypeError, ValueError, SyntaxError, AssertionError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        hint = ''
        if '_get_package_and_cfg_path' in lines[-1]:
            hint = " (inherit mmcals configs as _base_ = 'mmcals::configs/<name>.py')"
            lines = ['mmengine needs a folder after "::"']
        raise UsageError(f'config {path} could not be read: {lines[-1]}{hint}') from error
    return cfg


def default_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> str:
    if work_dir:
        return work_dir
    if cfg.get('work_dir'):
        return cfg.work_dir
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def _datasets(dataset_cfg: dict) -> Iterable[dict]:
    """The leaf datasets of a dataset config, through Concat/Repeat-style wrappers."""
    if 'datasets' in dataset_cfg:
        for child in dataset_cfg['datasets']:
            yield from _datasets(child)
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from _datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _generates_its_data(dataset_type) -> bool:
    from mmseg.registry import DATASETS
    cls = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
    return bool(getattr(cls, 'GENERATES_DATA', False))


def check_datasets(cfg: Config, loader_keys: Iterable[str]) -> None:
    """Every dataset folder the run will read exists, or a one-line error says which."""
    for key in loader_keys:
        loader = cfg.get(key)
        if not loader or not loader.get('dataset'):
            continue
        for dataset in _datasets(loader['dataset']):
            if _generates_its_data(dataset.get('type')):
                continue
            root = dataset.get('data_root') or ''
            prefixes = {k: v for k, v in (dataset.get('data_prefix') or {}).items() if v}
            layout = ', '.join(f'{v}/' for v in prefixes.values()) or 'the dataset files'
            where = f'--cfg-options {key}.dataset.data_root=PATH'
            if root and not osp.isdir(root):
                raise UsageError(f'{key}: data_root {root} does not exist; expected {layout} '
                                 f'under it (set it with {where})')
            for prefix in prefixes.values():
                folder = osp.join(root, prefix)
                if not osp.isdir(folder):
                    raise UsageError(f'{key}: dataset folder {folder} does not exist; '
                                     f'expected {layout} under {root or "."}')
            ann_file = dataset.get('ann_file')
            if ann_file and not osp.isfile(osp.join(root, ann_file)):
                raise UsageError(f'{key}: annotation file {osp.join(root, ann_file)} does '
                                 'not exist')
            _check_has_samples(key, dataset, root, prefixes)


def _default_argument(dataset_type, name: str, fallback):
    from mmseg.registry import DATASETS
    cls = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
    for klass in inspect.getmro(cls) if inspect.isclass(cls) else ():
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return fallback


def _check_has_samples(key: str, dataset: dict, root: str, prefixes: dict) -> None:
    """The dataset lists at least one sample (mmengine's own error would be about numpy)."""
    ann_file = dataset.get('ann_file')
    if ann_file:
        path = osp.join(root, ann_file)
        with open(path) as f:
            if not any(line.strip() for line in f):
                raise UsageError(f'{key}: the dataset has no samples: annotation file {path} '
                                 'is empty')
        return
    if 'img_path' not in prefixes:
        return
    folder = osp.join(root, prefixes['img_path'])
    suffix = dataset.get('img_suffix') or _default_argument(dataset.get('type'), 'img_suffix',
                                                            '.jpg')
    for _, _, files in os.walk(folder, followlinks=True):
        if any(name.endswith(suffix) for name in files):
            return
    raise UsageError(f'{key}: the dataset has no samples: no *{suffix} files under {folder} '
                     '(or set the dataset\'s img_suffix)')


def check_checkpoint(path: str, what: str) -> None:
    """A local checkpoint exists; its content is checked by :func:`preload_checkpoint`."""
    if '://' not in str(path) and not osp.isfile(path):
        raise UsageError(f'{what} {path} does not exist')


def preload_checkpoint(path: str, trust: Optional[bool]) -> dict:
    """Read a checkpoint safely before anything is written, refusing with one line.

    Returns ``{path: checkpoint}`` for :func:`build_runner`, which then does not read the file
    again. Remote checkpoints are read by the runner (with the same safety).
    """
    path = str(path)
    if '://' in path:
        return {}
    return {path: load_checkpoint_safely(path, map_location='cpu', trust=trust)}


def resume_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (auto) will take from ``work_dir``, if any; one line if the
    work dir's ``last_checkpoint`` names a file that is gone."""
    from mmengine.runner import find_latest_checkpoint
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    path = find_latest_checkpoint(osp.abspath(work_dir))
    if path and not osp.isfile(path):
        raise UsageError(f'{pointer} names {path}, which does not exist: pass --resume '
                         'CHECKPOINT with a checkpoint that does, or delete last_checkpoint '
                         'to start afresh')
    return path


def check_work_dir(work_dir: str) -> None:
    """The work dir can be created and written to, checked without creating it."""
    path = osp.abspath(work_dir)
    if osp.exists(path) and not osp.isdir(path):
        raise UsageError(f'--work-dir {work_dir} is a file, not a folder: choose another')
    parent = path
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise UsageError(f'--work-dir {work_dir} cannot be created: {parent} is a file, not a '
                         'folder; choose another work dir')
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise UsageError(f'--work-dir {work_dir} is not writable ({error.strerror} in '
                         f'{parent}): choose a folder you can write to') from error


def check_model(cfg: Config, preloaded: Optional[dict] = None,
                allow_partial: bool = False):
    """Build the model once, so that its config errors stop the tool before anything exists.

    CPU-only machines build it with BN where the config says SyncBN, as the runner will.
    Each checkpoint of ``preloaded`` (:func:`preload_checkpoint`) must fit it exactly, unless
    ``allow_partial`` (then the runner logs what it skips).

    Returns:
        nn.Module: The model built.
    """
    from mmengine.model import BaseTTAModel
    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    if not torch.cuda.is_available():
        compat._replace_sync_bn(model_cfg)
    try:
        with warnings.catch_warnings():  # the runner's build shows the libraries' warnings
            warnings.simplefilter('ignore')
            model = MODELS.build(model_cfg)
    except (ValueError, TypeError, KeyError, AssertionError, NotImplementedError) as error:
        raise UsageError(f'model config: {_one_line(error)}') from error
    if isinstance(model, BaseTTAModel):  # its state dict prefixes the wrapped model's keys
        model = model.module
    _check_loss_classes(model)
    if not allow_partial:
        for path, checkpoint in (preloaded or {}).items():
            fit_to_model(model, checkpoint, path, allow_partial=False)
    return model


def _check_loss_classes(model) -> None:
    """A loss that knows its number of classes agrees with its head (else the first forward
    pass fails, after the work dir exists)."""
    for name, head in model.named_modules():
        losses = getattr(head, 'loss_decode', None)
        classes = getattr(head, 'out_channels', getattr(head, 'num_classes', None))
        if losses is None or classes is None:
            continue
        for loss in losses if isinstance(losses, torch.nn.ModuleList) else [losses]:
            wanted = getattr(loss, 'num_classes', None)
            if isinstance(wanted, int) and wanted != classes:
                raise UsageError(f'model config: {name} predicts {classes} classes but its '
                                 f'{type(loss).__name__} has num_classes={wanted}: make them '
                                 'equal')


def _hook_type(hook: dict) -> str:
    kind = hook.get('type', '')
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')


def check_hooks(cfg: Config) -> None:
    """Hook settings that need other parts of the config (checked before the runner exists)."""
    has_val = all(cfg.get(key) is not None for key in ('val_cfg', 'val_dataloader',
                                                        'val_evaluator'))
    for hook in cfg.get('custom_hooks') or []:
        if _hook_type(hook) == 'CALSHook' and hook.get('source', 'val') == 'val' \
                and not has_val:
            raise UsageError("CALSHook(source='val') needs a validation loop: configure "
                             "val_dataloader, val_cfg and val_evaluator, or use "
                             "CALSHook(source='train')")


def _pipelines(loader: Optional[dict]) -> Iterable[list]:
    if not loader or not loader.get('dataset'):
        return
    for dataset in _datasets(loader['dataset']):
        if isinstance(dataset.get('pipeline'), list):
            yield dataset['pipeline']


def _insert_checks(pipeline: list, num_classes: Optional[int], ignore_index: int) -> None:
    types = [_hook_type(step) for step in pipeline]
    if 'LoadImageFromFile' in types and 'CheckSampleFiles' not in types:
        pipeline.insert(types.index('LoadImageFromFile'), dict(type='CheckSampleFiles'))
        types = [_hook_type(step) for step in pipeline]
    if num_classes and 'LoadAnnotations' in types and 'CheckSegLabels' not in types:
        pipeline.insert(types.index('LoadAnnotations') + 1,
                        dict(type='CheckSegLabels', num_classes=num_classes,
                             ignore_index=ignore_index))


def add_input_checks(cfg: Config, loader_keys: Iterable[str], labels: bool) -> None:
    """Insert :class:`~mmcals.datasets.CheckSampleFiles` (and, with ``labels``,
    :class:`~mmcals.datasets.CheckSegLabels`) into the pipelines of ``loader_keys``."""
    head = cfg.get('model', {}).get('decode_head') or {}
    if isinstance(head, list):  # cascade heads: the last one predicts
        head = head[-1]
    num_classes = head.get('num_classes') if labels else None
    for key in loader_keys:
        for pipeline in _pipelines(cfg.get(key)):
            _insert_checks(pipeline, num_classes, head.get('ignore_index', 255))


def add_training_checks(cfg: Config) -> None:
    """What ``tools/train.py`` adds to a config: input checks in the training pipelines and
    :class:`~mmcals.hooks.DivergenceHook` (both only if absent)."""
    add_input_checks(cfg, ['train_dataloader'], labels=True)
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(_hook_type(hook) == 'DivergenceHook' for hook in hooks):
        # Assigned whole: Config.setdefault returns a copy of a new list value.
        cfg.custom_hooks = hooks + [dict(type='DivergenceHook')]


def use_safe_checkpoint_hook(cfg: Config) -> None:
    """Put :class:`~mmcals.hooks.SafeCheckpointHook` in place of mmengine's CheckpointHook,
    keeping its arguments."""
    hooks = dict(cfg.get('default_hooks') or {})
    checkpoint = dict(hooks.get('checkpoint') or dict(type='CheckpointHook'))
    if _hook_type(checkpoint) == 'CheckpointHook':
        checkpoint['type'] = 'SafeCheckpointHook'
    hooks['checkpoint'] = checkpoint
    cfg.default_hooks = hooks  # assigned whole: Config.setdefault copies a new value


def check_amp(amp: bool) -> None:
    if amp and not torch.cuda.is_available():
        raise UsageError('--amp needs a CUDA device (mmengine mixed precision runs on GPUs); '
                         'drop --amp on this machine')


def build_runner(cfg: Config, trust: Optional[bool] = None, allow_partial: bool = False,
                 preloaded: Optional[dict] = None):
    """Adapt the config to the machine, build mmengine's runner, log what was adapted.

    The runner writes checkpoints through :class:`~mmcals.hooks.SafeCheckpointHook` and
    loads them with :func:`mmcals.checkpoint.install_safe_loading` (no code from the file
    runs unless trusted; a checkpoint that does not fit the model is refused unless
    ``allow_partial``).

    Args:
        cfg (Config): The run's config (changed in place).
        trust (bool, optional): Trust checkpoints (``--trust-checkpoint``); None reads
            ``MMCALS_TRUST_CHECKPOINTS``. Default: None.
        allow_partial (bool): ``--allow-partial``. Default: False.
        preloaded (dict, optional): From :func:`preload_checkpoint`. Default: None.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    changes = adapt_config_to_device(cfg)
    use_safe_checkpoint_hook(cfg)
    with compat.cuda_set_device_optional():
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    install_safe_loading(runner, trust=trust, allow_partial=allow_partial,
                         preloaded=preloaded)
    if changes:
        runner.logger.info('No CUDA device: adapted the config for CPU (' + ', '.join(changes)
                           + ')')
    return runner


@contextlib.contextmanager
def leave_no_run(work_dir: str):
    """If the block fails on bad input before a checkpoint was written, remove what it created
    in ``work_dir`` (log folder, config copy, CALS history), so nothing looks like a run.

    A diverged run keeps its logs and checkpoints; other ranks than 0 leave the cleaning to
    rank 0.
    """
    existed = osp.isdir(work_dir)
    before = set(os.listdir(work_dir)) if existed else set()
    try:
        yield
    except (*_SELF_EXPLAINING, ValueError, FileNotFoundError) as error:
        if isinstance(error, TrainingDiverged) or os.environ.get('RANK', '0') != '0':
            raise
        created = set(os.listdir(work_dir)) - before if osp.isdir(work_dir) else set()
        if not any(name.endswith('.pth') or name == 'last_checkpoint' for name in created):
            for name in created:
                path = osp.join(work_dir, name)
                if osp.isdir(path) and not osp.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
            if not existed:
                shutil.rmtree(work_dir, ignore_errors=True)
        raise


@contextlib.contextmanager
def explain_failures(cfg: Config):
    """Turn known failures inside mmengine's loops into one-line errors."""
    try:
        yield
    except AssertionError as error:
        found = re.search(r'failed to load image: (.+)$', str(error).strip())
        if not found:
            raise
        raise UsageError(f'image {found.group(1)} could not be decoded (damaged, or not an '
                         'image): replace it, or remove it from the dataset') from error
    except ValueError as error:
        if 'need at least one array to concatenate' not in str(error):
            raise
        raise UsageError('a dataset has no samples: check data_root, data_prefix and the '
                         'suffixes of its config') from error
    except DOWNLOAD_ERRORS as error:
        raise explain_download_failure(cfg, error) from error


def explain_download_failure(cfg: Config, error: Exception) -> UsageError:
    """One line for a failed download of pretrained weights."""
    pretrained = cfg.get('model', {}).get('pretrained')
    source = pretrained or cfg.get('load_from') or 'pretrained weights'
    return UsageError(f'could not download {source} ({error}); without internet run with '
                      '--cfg-options model.pretrained=None or point it at a local checkpoint')


DOWNLOAD_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError)


def finish(distributed: bool) -> None:
    """End a finished run; under CPU DDP, exit before the interpreter's teardown can abort.

    CPU DDP processes sometimes abort at interpreter exit after all work finished
    (docs/stack.md, item 4), which would turn a good run into a failed exit code.
    """
    if not distributed:
        return
    import logging

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def load_test_config(args, script: str) -> Config:
    """The config of a tool that evaluates ``args.checkpoint`` (``tools/test.py`` and alike).

    Sets up logging, checks the launcher and the checkpoint path, and fills in the launcher,
    log level, work dir and ``load_from`` from the parsed arguments of
    :func:`add_common_arguments`; ``script`` picks the launcher hint (see
    :func:`check_launcher`).
    """
    setup_logging(args.log_level)
    check_launcher(args.launcher, script=script)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.log_level = args.log_level
    cfg.work_dir = default_work_dir(cfg, args.config, args.work_dir)
    check_checkpoint(args.checkpoint, 'checkpoint')
    cfg.load_from = args.checkpoint
    return cfg


def run_test_loop(cfg: Config, args) -> None:
    """Check the test data, checkpoint, model and work dir, then run mmengine's test loop."""
    trust = True if args.trust_checkpoint else None
    check_datasets(cfg, ['test_dataloader'])
    preloaded = preload_checkpoint(args.checkpoint, trust)
    check_model(cfg, preloaded, args.allow_partial)
    check_work_dir(cfg.work_dir)
    add_input_checks(cfg, ['test_dataloader'], labels=False)
    with leave_no_run(cfg.work_dir), explain_failures(cfg):
        runner = build_runner(cfg, trust=trust, allow_partial=args.allow_partial,
                              preloaded=preloaded)
        runner.test()
    finish(distributed=args.launcher != 'none')
