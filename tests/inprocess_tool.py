"""Run a tools/ script's ``main`` inside the test process, for checks that end before a runner
is built: the same code path as the command line without paying a new interpreter's imports.

Tests of what happens once a runner exists (training, evaluation) keep using subprocesses
(``tooling.run_tool``).
"""
import contextlib
import io
import os
import os.path as osp
import runpy
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@contextlib.contextmanager
def _environment(env):
    saved = {name: os.environ.get(name) for name in env or {}}
    for name, value in (env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_tool_here(script, *args, env=None) -> subprocess.CompletedProcess:
    """``python tools/<script> args`` in this process; returns its exit code and output."""
    path = osp.join(REPO, 'tools', script)
    argv = [path] + [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    saved_argv = sys.argv
    sys.argv = argv
    try:
        with _environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(path, run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
