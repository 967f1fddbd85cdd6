"""What ``tools/train.py`` and ``tools/test.py`` share: argument checks and runner set-up.

Bad input ends the tools with one line on stderr (``error: ...``) naming the problem and the
fix, and exit code 2, before anything is written. Set ``MMCALS_TRACEBACK=1`` to see the
traceback instead.
"""
import argparse
import os
import os.path as osp
import sys
import urllib.error
from typing import Callable, Iterable, Optional

import torch
from mmengine.config import Config, DictAction

from .compat import adapt_config_to_device

TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
SLURM_VARIABLES = ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def run_tool(main: Callable[[], None]) -> None:
    """Run a tool's ``main``, turning bad input into one line on stderr and exit code 2."""
    try:
        main()
    except (UsageError, FileNotFoundError, ValueError) as error:
        if os.environ.get('MMCALS_TRACEBACK'):
            raise
        message = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        hint = '' if isinstance(error, UsageError) else ' (MMCALS_TRACEBACK=1 shows where)'
        print(f'error: {message}{hint}', file=sys.stderr)
        sys.exit(2)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the folder for logs, checkpoints and results')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. train_dataloader.dataset.data_root=data/cs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (tools/dist_*.sh use pytorch)')
    # torchrun passes --local-rank to old-style scripts; accept both spellings.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def check_launcher(launcher: str) -> None:
    """Fail early when a distributed launcher is named but its environment is missing."""
    required = {'pytorch': TORCHRUN_VARIABLES, 'slurm': SLURM_VARIABLES}.get(launcher, ())
    missing = [name for name in required if name not in os.environ]
    if missing:
        hint = ('start it with tools/dist_train.sh CONFIG GPUS (torchrun)'
                if launcher == 'pytorch' else 'start it with tools/slurm_train.sh under srun')
        raise UsageError(f'--launcher {launcher} needs the variables its launcher sets '
                         f'({", ".join(missing)} missing): {hint}, or drop --launcher')


def load_config(path: str, cfg_options: Optional[dict]) -> Config:
    if not osp.isfile(path):
        raise UsageError(f'config file {path} does not exist')
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


def check_checkpoint(path: str, what: str) -> None:
    if '://' not in path and not osp.isfile(path):
        raise UsageError(f'{what} {path} does not exist')


def check_amp(amp: bool) -> None:
    if amp and not torch.cuda.is_available():
        raise UsageError('--amp needs a CUDA device (mmengine mixed precision runs on GPUs); '
                         'drop --amp on this machine')


def build_runner(cfg: Config):
    """Adapt the config to the machine, build mmengine's runner, log what was adapted."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    changes = adapt_config_to_device(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if changes:
        runner.logger.info('No CUDA device: adapted the config for CPU (' + ', '.join(changes)
                           + ')')
    return runner


def explain_download_failure(cfg: Config, error: Exception) -> UsageError:
    pretrained = cfg.get('model', {}).get('pretrained')
    source = pretrained or cfg.get('load_from') or 'pretrained weights'
    return UsageError(f'could not download {source} ({error}); without internet run with '
                      '--cfg-options model.pretrained=None or point it at a local checkpoint')


DOWNLOAD_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError)


def finish(distributed: bool) -> None:
    """End a finished run; under CPU DDP, exit before the interpreter's teardown can abort.

    CPU DDP processes sometimes abort at interpreter exit after all work finished
    (stack.md item 4), which would turn a good run into a failed exit code.
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
