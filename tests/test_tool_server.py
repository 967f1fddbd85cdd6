"""The tests' tool server (tests/tool_server.py) runs a script as a new interpreter would."""
import os
import subprocess

import pytest
from tooling import run_tool

PROBE = r'''
import json, os, sys
import helper_next_to_the_script  # found through sys.path[0], the script's folder
print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "path0": sys.path[0],
                  "name": __name__, "value": os.environ.get("MMCALS_PROBE"),
                  "removed": "MMCALS_PROBE_REMOVED" in os.environ,
                  "stdin": sys.stdin.read()}))
print("to stderr", file=sys.stderr)
code = sys.argv[1]
if code == "raise":
    raise RuntimeError("boom")
if code == "message":
    sys.exit("error: a message")
if code == "kill":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(code))
'''


@pytest.fixture
def probe(tmp_path):
    folder = tmp_path / 'scripts'
    folder.mkdir()
    (folder / 'helper_next_to_the_script.py').write_text('')
    script = folder / 'probe.py'
    script.write_text(PROBE)
    return script


@pytest.mark.parametrize('code', ['0', '3', 'raise', 'message', 'kill'])
def test_a_forked_run_matches_a_new_interpreter(probe, tmp_path, code, monkeypatch):
    monkeypatch.setenv('MMCALS_PROBE_REMOVED', '1')
    env = {'MMCALS_PROBE': 'x y', 'MMCALS_PROBE_REMOVED': None}
    forked = run_tool(str(probe), code, 'two words', env=env, cwd=tmp_path)
    fresh = run_tool(str(probe), code, 'two words', env=env, cwd=tmp_path, fresh=True)
    assert forked.returncode == fresh.returncode
    assert forked.stdout == fresh.stdout
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert forked.stderr.splitlines()[0] == 'to stderr'
    expected = {'0': 0, '3': 3, 'raise': 1, 'message': 1, 'kill': -9}[code]
    assert forked.returncode == expected
    assert f'"cwd": "{tmp_path}"' in forked.stdout
    assert f'"path0": "{probe.parent}"' in forked.stdout
    assert '"name": "__main__"' in forked.stdout and '"value": "x y"' in forked.stdout
    assert '"removed": false' in forked.stdout and '"stdin": ""' in forked.stdout


def test_a_timeout_kills_the_child_and_raises_as_subprocess_does(tmp_path):
    script = tmp_path / 'sleeper.py'
    script.write_text('import time\nprint("started", flush=True)\ntime.sleep(60)\n')
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        run_tool(str(script), timeout=3)
    assert 'started' in caught.value.output
    # The server goes on serving; a missing script fails as with a new interpreter.
    missing = str(tmp_path / 'missing.py')
    forked, fresh = run_tool(missing), run_tool(missing, fresh=True)
    assert forked.returncode == fresh.returncode == 2
    assert "can't open file" in forked.stderr and missing in forked.stderr


def test_an_import_time_variable_gets_a_new_interpreter(tmp_path):
    # OMP_NUM_THREADS is read when torch is imported: a run asking for another value than the
    # server was started with must see what a new interpreter sees, not the server's.
    script = tmp_path / 'threads.py'
    script.write_text('import torch\nprint(torch.get_num_threads())\n')
    other = {'OMP_NUM_THREADS': '2' if os.environ.get('OMP_NUM_THREADS') == '1' else '1'}
    result = run_tool(str(script), env=other)
    fresh = run_tool(str(script), env=other, fresh=True)
    assert result.returncode == fresh.returncode == 0, result.stderr[-2000:]
    assert result.stdout == fresh.stdout
