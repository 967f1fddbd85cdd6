"""Helpers for tests that drive the real tools/ scripts as subprocesses."""
import atexit
import json
import os
import os.path as osp
import select
import signal
import subprocess
import sys
import tempfile

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SERVER = osp.join(osp.dirname(osp.abspath(__file__)), 'tool_server.py')

# Variables read at start-up or while the stack is imported: a run that needs another value of
# one of them than the tool server was started with gets a fresh interpreter (PYTHONPATH is
# applied by the server's child itself).
IMPORT_TIME = ('PYTHONHOME', 'PYTHONHASHSEED', 'PYTHONWARNINGS', 'PYTHONNOUSERSITE',
               'PYTHONDONTWRITEBYTECODE', 'PYTHONSAFEPATH', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS',
               'OPENBLAS_NUM_THREADS', 'LD_PRELOAD', 'LD_LIBRARY_PATH',
               'MPLBACKEND', 'MPLCONFIGDIR')

_server = None
_server_env = None


def cityscapes_options(root: str) -> list:
    """--cfg-options that point every dataloader of a Cityscapes config at ``root``."""
    return [f'{key}.dataset.data_root={root}'
            for key in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def tool_env(env=None) -> dict:
    """The environment of a tool run: this process's, updated by ``env`` (None removes)."""
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return full_env


def _stop_server():
    if _server is not None and _server.poll() is None:
        _server.stdin.close()
        try:
            _server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _server.kill()


def _get_server(full_env: dict):
    """The tool server of this process (started on first use), or None if it cannot serve a
    run with ``full_env``."""
    global _server, _server_env
    if os.environ.get('MMCALS_TEST_FRESH_TOOLS') == '1':
        return None
    if _server is None or _server.poll() is not None:
        _server_env = tool_env()
        log = tempfile.NamedTemporaryFile('w+', prefix='mmcals-tool-server-', suffix='.log',
                                          delete=False)
        _server = subprocess.Popen([sys.executable, SERVER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=log, cwd=REPO, text=True,
                                   env=_server_env, bufsize=1)
        _server.log_path = log.name
        log.close()
        atexit.register(_stop_server)
    if any(full_env.get(name) != _server_env.get(name) for name in IMPORT_TIME):
        return None
    return _server


def _reply(server, deadline_s):
    """The next protocol line of the server, or None when ``deadline_s`` passed first."""
    ready, _, _ = select.select([server.stdout], [], [], deadline_s)
    if not ready:
        return None
    line = server.stdout.readline()
    if not line:
        with open(server.log_path) as log:
            raise RuntimeError(f'the test tool server {SERVER} died:\n{log.read()[-3000:]}')
    return json.loads(line)


def _run_forked(server, command, cwd, full_env, timeout):
    with tempfile.TemporaryDirectory(prefix='mmcals-tool-') as tmp:
        out, err = osp.join(tmp, 'stdout'), osp.join(tmp, 'stderr')
        request = dict(script=command[1], args=command[2:], cwd=str(cwd), env=full_env,
                       stdout=out, stderr=err)
        server.stdin.write(json.dumps(request) + '\n')
        server.stdin.flush()
        pid = _reply(server, 60)['pid']
        reply = _reply(server, timeout)
        timed_out = reply is None
        if timed_out:
            os.kill(pid, signal.SIGKILL)
            reply = _reply(server, 60)

        def read(path):
            with open(path, encoding='utf-8', errors='replace') as f:
                return f.read()

        stdout, stderr = read(out), read(err)
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(command, reply['returncode'], stdout, stderr)


def run_tool(*args, env=None, timeout=600, cwd=REPO, fresh=False):
    """Run ``python tools/<script> args`` (or a ``.sh`` tool with bash) as a subprocess;
    ``script`` may also be an absolute path (a benchmark).

    ``env`` entries update the environment; a value of None removes that variable. Python
    tools run in a child forked from this process's tool server (tests/tool_server.py: the
    stack imported once), unless ``fresh`` is set, ``env`` changes a variable read at import
    time (``IMPORT_TIME``) or MMCALS_TEST_FRESH_TOOLS=1: then in a new interpreter.
    """
    script = osp.join(REPO, 'tools', args[0])
    command = (['bash', script] if script.endswith('.sh') else [sys.executable, script])
    command += [str(a) for a in args[1:]]
    full_env = tool_env(env)
    server = None if fresh or script.endswith('.sh') else _get_server(full_env)
    if server is not None:
        return _run_forked(server, command, cwd, full_env, timeout)
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
