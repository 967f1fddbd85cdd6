"""tools/experiments/camvid_study.sh's job queue, run with a stand-in for the Python tools.

The study runs JOBS trainings at once (one thread each) for hours; a queue that starts more
of them than that slows every run and distorts the wall times the report quotes. Here the
script runs end to end with ``PYTHON`` pointing at a stand-in that records when each tool
starts and ends and writes the files the script copies, so the queue and the skipping of
finished runs are checked in seconds.
"""
import json
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(REPO, 'tools', 'experiments', 'camvid_study.sh')

# The stand-in interpreter: `-` and `-c` (the script's inline Python) go to the real one.
FAKE = '''#!{python}
import json, os, sys, time
args = sys.argv[1:]
if args[0] in ('-', '-c'):
    os.execv({python!r}, [{python!r}] + args)
def opt(name):
    return args[args.index(name) + 1]
def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f)
def log(event, run):
    with open(os.environ['FAKE_LOG'], 'a') as f:
        f.write(json.dumps([event, run, time.monotonic()]) + '\\n')
tool = os.path.basename(args[0])
if tool == 'train.py':
    work = opt('--work-dir')
    run = os.path.basename(os.path.dirname(work))
    log('start', run)
    time.sleep(0.3)
    iters = [a for a in args if a.startswith('train_cfg.max_iters=')][-1].split('=')[1]
    write(os.path.join(work, 'iter_%s.pth' % iters), {{}})
    write(os.path.join(work, '20260101_000000', 'vis_data', 'scalars.json'), {{}})
    log('end', run)
elif tool == 'test.py':
    work = opt('--work-dir')
    write(os.path.join(work, '20260101_000000', 'calibration', 'calibration.json'), {{}})
    write(os.path.join(work, '20260101_000000', '20260101_000000.json'), {{}})
elif tool == 'logit_gaps.py':
    log('start', 'logit_gaps')
    write(os.path.join(opt('--out-dir'), 'logit_gaps.json'),
          {{'all': {{'gap_at_quantile': {{'0.9': 12.34}}}}}})
elif tool == 'temperature_scaling.py':
    work = opt('--work-dir')
    log('start', os.path.basename(work))
    write(os.path.join(work, 'temperature_scaling.json'), {{}})
    write(os.path.join(work, 'calibration.json'), {{}})
elif tool != 'camvid_report.py':
    sys.exit('unexpected tool ' + args[0])
'''

FIRST_SEED_RUNS = ['ce_s0', 'cals_m10_s0', 'cals_chosen_s0']
OTHER_SEED_RUNS = ['ce_s1', 'cals_m10_s1', 'cals_chosen_s1']
ONE_SEED_RUNS = ['ls_s0', 'mbls_s0', 'focal_s0', 'ecp_s0', 'cals_train_m10_s0']
ALL_TRAINED = set(FIRST_SEED_RUNS + OTHER_SEED_RUNS + ONE_SEED_RUNS)


def _run_study(tmp_path, jobs, first_seed_done):
    camvid = tmp_path / 'camvid'
    for d in ('train', 'val', 'valannot'):
        (camvid / d).mkdir(parents=True)
    (camvid / 'val.txt').write_text('')
    fake = tmp_path / 'python'
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    results = tmp_path / 'results'
    if first_seed_done:  # a study stopped after the first seed: those runs must be skipped
        for run in FIRST_SEED_RUNS:
            (results / run).mkdir(parents=True)
            (results / run / 'wall_time.json').write_text('{}')
        (results / 'ce_ts_s0').mkdir()
        (results / 'ce_ts_s0' / 'temperature_scaling.json').write_text('{}')
        (results / 'margin').mkdir()
        (results / 'margin' / 'margin.json').write_text(json.dumps({'margin': 12.3}))
    log = tmp_path / 'events.jsonl'
    env = dict(os.environ, PYTHON=str(fake), FAKE_LOG=str(log), CAMVID_ROOT=str(camvid),
               ITERS='8', SEEDS='0 1', JOBS=str(jobs), OUT=str(tmp_path / 'out'),
               RESULTS=str(results), COMMIT='0')
    proc = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return events, results


def _max_concurrent_trainings(events):
    running = peak = 0
    for event, run, _ in sorted((e for e in events if e[1] in ALL_TRAINED),
                                key=lambda e: (e[2], e[0] == 'start')):
        running += 1 if event == 'start' else -1
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize('jobs', [1, 2])
def test_never_more_than_jobs_trainings_at_once_after_skipped_runs(tmp_path, jobs):
    events, results = _run_study(tmp_path, jobs, first_seed_done=True)
    started = [run for event, run, _ in events if event == 'start']
    expected = OTHER_SEED_RUNS + ONE_SEED_RUNS
    assert sorted(r for r in started if r in ALL_TRAINED) == sorted(expected)
    assert _max_concurrent_trainings(events) <= jobs
    for run in expected:
        assert (results / run / 'wall_time.json').is_file(), run
    assert (results / 'ce_ts_s1' / 'temperature_scaling.json').is_file()
    # the margin was measured once, by the stopped study: not again
    assert 'logit_gaps' not in started
    # the 3-seed trainings end before the 1-seed baselines start, and the temperature of
    # seed 1 is queued first (with one slot, it also runs first)
    time = {(event, run): t for event, run, t in events}
    first_baseline = min(time['start', run] for run in ONE_SEED_RUNS)
    assert max(time['end', run] for run in OTHER_SEED_RUNS) < first_baseline
    if jobs == 1:
        assert time['start', 'ce_ts_s1'] < first_baseline


def test_fresh_study_runs_every_run_once_two_at_a_time(tmp_path):
    events, results = _run_study(tmp_path, 2, first_seed_done=False)
    started = [run for event, run, _ in events if event == 'start']
    trained = [r for r in started if r in ALL_TRAINED]
    assert sorted(trained) == sorted(ALL_TRAINED)
    assert _max_concurrent_trainings(events) <= 2
    assert started.count('logit_gaps') == 1
    margin = json.loads((results / 'margin' / 'margin.json').read_text())
    assert margin['margin'] == 12.3  # 12.34 rounded to one decimal
    # the chosen-margin runs start only after the margin was measured
    assert started.index('logit_gaps') < started.index('cals_chosen_s0')
    assert started.index('logit_gaps') < started.index('cals_chosen_s1')
