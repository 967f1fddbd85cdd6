"""Helpers for tests that drive the real tools/ scripts as subprocesses."""
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def cityscapes_options(root: str) -> list:
    """--cfg-options that point every dataloader of a Cityscapes config at ``root``."""
    return [f'{key}.dataset.data_root={root}'
            for key in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def run_tool(*args, env=None, timeout=600, cwd=REPO):
    """Run ``python tools/<script> args`` (or a ``.sh`` tool with bash) as a subprocess.

    ``env`` entries update the environment; a value of None removes that variable.
    """
    script = osp.join(REPO, 'tools', args[0])
    command = (['bash', script] if script.endswith('.sh') else [sys.executable, script])
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(command + [str(a) for a in args[1:]], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
