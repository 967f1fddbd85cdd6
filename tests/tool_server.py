"""A tool launcher for the tests: an interpreter that has imported the stack once and forks one
child per ``python tools/<script> ...`` that ``tooling.run_tool`` asks for.

A new interpreter spends about 4.5 s of CPU importing torch, mmengine, mmcv and mmseg before a
tool does anything; the suite starts dozens of tools. A forked child starts from the imported
modules instead and then runs the script exactly as ``python <script> <args>`` would: the
requested environment, working directory, ``sys.argv``, ``sys.path[0]`` (the script's
folder), ``__name__ == '__main__'``, stdin from /dev/null, stdout and stderr in files, the exit
code of ``SystemExit`` (an uncaught exception prints its traceback and gives 1, a signal gives
``-signal`` as with ``subprocess``), ``atexit`` handlers run at the end.

Only the modules are shared: the server runs no torch operation (so no OpenMP thread pool
exists when it forks) and no tool, so every child starts from the same state. What is read at
import time (``OMP_NUM_THREADS``, ...) is the server's: ``tooling.run_tool`` starts a fresh
interpreter when a run asks for a different value of one of those. ``PYTHONPATH`` entries are
put on ``sys.path`` of the child, after the script's folder, as the interpreter puts them.

Protocol: one JSON request per line on stdin (``script``, ``args``, ``cwd``, ``env``,
``stdout``, ``stderr`` file paths); two JSON lines back on the original stdout, ``{"pid": N}``
when the child is started and ``{"returncode": R}`` when it has ended.
"""
import json
import os
import sys

# The protocol keeps the original pipes; fd 1 goes to /dev/null so that nothing the imports
# print can corrupt it.
REPLIES = os.fdopen(os.dup(1), 'w', buffering=1)
REQUESTS = os.fdopen(os.dup(0), 'r')
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

import atexit  # noqa: E402
import importlib  # noqa: E402
import runpy  # noqa: E402
import traceback  # noqa: E402

import matplotlib  # noqa: E402,F401
import mmengine.runner  # noqa: E402,F401
import torch  # noqa: E402,F401

import mmcals  # noqa: E402,F401  (also applies the stack fixes, as every tool does first)

# After mmcals, as in the tools: mmseg's imports need its mmcv._ext stand-in on mmcv-lite.
# The rest are imported on first use by a training (the optimizer's step imports torch._dynamo).
# pkg_resources stays out: its deprecation warning, which the tools silence, must be theirs.
for _module in ('mmseg.datasets', 'mmseg.evaluation', 'mmseg.models', 'mmseg.engine',
                'mmseg.visualization', 'matplotlib.pyplot', 'torch._dynamo', 'torch.onnx'):
    importlib.import_module(_module)


def share_pure_work() -> None:
    """Do once here what every child would repeat with the same result: read mmseg's
    model-index files (mmengine reads all ~200 of them for every ``mmseg::`` name it resolves,
    ~0.5 s each time), set up yapf, which formats the config text each time mmengine asks for
    ``Config.pretty_text`` (at start-up and at every checkpoint, ~0.8 s each), and collect the
    environment report of the Runner. All are memoised: same arguments (and, for a file, same
    modification time), same result, so what a tool writes or logs is unchanged."""
    import copy
    import functools

    import mmengine.config.config as config_module
    import mmengine.config.utils as config_utils

    read = config_utils.load
    files = {}

    @functools.wraps(read)
    def load(path, *args, **kwargs):
        if args or kwargs or not isinstance(path, str) or not path.endswith(('.yml', '.yaml')):
            return read(path, *args, **kwargs)
        key = (path, os.stat(path).st_mtime_ns)
        if key not in files:
            files[key] = read(path)
        return copy.deepcopy(files[key])

    config_utils.load = load
    mim = os.path.join(os.path.dirname(importlib.import_module('mmseg').__file__), '.mim')
    if os.path.isfile(os.path.join(mim, 'model-index.yml')):
        for metafile in load(os.path.join(mim, 'model-index.yml'))['Import']:
            load(os.path.join(mim, metafile))

    format_code = config_module.FormatCode
    formatted = {}

    @functools.wraps(format_code)
    def memo_format_code(source, **kwargs):
        key = (source, json.dumps(kwargs, sort_keys=True, default=repr))
        if key not in formatted:
            formatted[key] = format_code(source, **kwargs)
        return formatted[key]

    config_module.FormatCode = memo_format_code
    memo_format_code('x = dict(a=1)\n', style_config=dict(based_on_style='pep8'))
    formatted.clear()  # that call only loaded yapf's grammar

    # The environment report every Runner logs (compilers' versions from subprocesses, ~1.5 s):
    # the machine's, the same for every child. Only with a CPU-only torch, where asking for
    # it cannot initialise CUDA in a process that forks.
    if torch.version.cuda is None and not torch.backends.mps.is_available():
        import mmengine.runner.runner as runner_module
        environment = runner_module.collect_env()
        runner_module.collect_env = functools.wraps(runner_module.collect_env)(
            lambda: copy.deepcopy(environment))


share_pure_work()

# The server's sys.path without the entry of this script's folder (tests/): a child puts its
# own script's folder first, as the interpreter does.
BASE_PATH = sys.path[1:]


def _exit_code(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=sys.stderr)  # sys.exit('message'): printed, status 1
    return 1


def run_child(request: dict) -> None:
    """In the forked child: become ``python script args`` and never return."""
    code = 1
    try:
        REPLIES.close()
        REQUESTS.close()
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        os.dup2(os.open(request['stdout'], flags, 0o644), 1)
        os.dup2(os.open(request['stderr'], flags, 0o644), 2)
        os.environ.clear()
        os.environ.update(request['env'])
        os.chdir(request['cwd'])
        script = request['script']
        sys.argv = [script, *request['args']]
        # As the interpreter builds it: the script's folder, then PYTHONPATH, then the rest.
        extra = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                 if p and p not in BASE_PATH]
        sys.path[:] = [os.path.dirname(os.path.abspath(script)), *extra, *BASE_PATH]
        if not os.path.isfile(script):  # as the interpreter says it
            print(f"{sys.executable}: can't open file {script!r}: [Errno 2] No such file or "
                  'directory', file=sys.stderr)
            code = 2
            return
        try:
            runpy.run_path(script, run_name='__main__')
            code = 0
        except SystemExit as exit_:
            code = _exit_code(exit_)
        except BaseException:  # noqa: BLE001  (an uncaught exception, as the interpreter shows it)
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def main() -> None:
    for line in REQUESTS:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request)
        REPLIES.write(json.dumps({'pid': pid}) + '\n')
        _, status = os.waitpid(pid, 0)
        REPLIES.write(json.dumps({'returncode': os.waitstatus_to_exitcode(status)}) + '\n')


if __name__ == '__main__':
    main()
