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
import time

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
    first = 0
    if '--resume' in args:  # as mmengine: from the checkpoint last_checkpoint names
        with open(os.path.join(work, 'last_checkpoint')) as f:
            first = int(os.path.basename(f.read().strip())[5:-4])
        log('resume', run)
    log('start', run)
    print('  - CPU capability usage: AVX2')  # as torch's build information in the log
    time.sleep(0.3)
    iters = int([a for a in args if a.startswith('train_cfg.max_iters=')][-1].split('=')[1])
    write(os.path.join(work, 'iter_%d.pth' % iters), {{}})
    with open(os.path.join(work, 'last_checkpoint'), 'w') as f:
        f.write(os.path.join(work, 'iter_%d.pth' % iters))
    stamp = '20260101_%06d' % len(os.listdir(work))  # a new folder per start
    scalars = os.path.join(work, stamp, 'vis_data', 'scalars.json')
    os.makedirs(os.path.dirname(scalars))
    with open(scalars, 'w') as f:
        for step in range(first + 1, iters + 1):
            f.write(json.dumps({{'loss': 1.0, 'segment': stamp, 'step': step}}) + '\\n')
        f.write(json.dumps({{'mIoU': 50.0, 'segment': stamp, 'step': iters}}) + '\\n')
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
elif tool == 'camvid_report.py':
    log('report', args[1])
else:
    sys.exit('unexpected tool ' + args[0])
'''

FIRST_SEED_RUNS = ['ce_s0', 'cals_m10_s0', 'cals_chosen_s0']
OTHER_SEED_RUNS = ['ce_s1', 'cals_m10_s1', 'cals_chosen_s1']
ONE_SEED_RUNS = ['ls_s0', 'mbls_s0', 'focal_s0', 'ecp_s0', 'cals_train_m10_s0']
ALL_TRAINED = set(FIRST_SEED_RUNS + OTHER_SEED_RUNS + ONE_SEED_RUNS)


def _study_env(tmp_path, **settings):
    """An empty CamVid layout, the stand-in interpreter, and the script's environment."""
    camvid = tmp_path / 'camvid'
    for d in ('train', 'val', 'valannot'):
        (camvid / d).mkdir(parents=True)
    (camvid / 'val.txt').write_text('')
    fake = tmp_path / 'python'
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PYTHON=str(fake), FAKE_LOG=str(tmp_path / 'events.jsonl'),
                CAMVID_ROOT=str(camvid), ITERS='8', OUT=str(tmp_path / 'out'),
                RESULTS=str(tmp_path / 'results'), COMMIT='0', OMP_NUM_THREADS='1', **settings)


def _run_study(tmp_path, jobs, first_seed_done, before=None):
    env = _study_env(tmp_path, SEEDS='0 1', JOBS=str(jobs))
    results = tmp_path / 'results'
    if first_seed_done:  # a study stopped after the first seed: those runs must be skipped
        for run in FIRST_SEED_RUNS:
            (results / run).mkdir(parents=True)
            (results / run / 'wall_time.json').write_text('{}')
        (results / 'ce_ts_s0').mkdir()
        (results / 'ce_ts_s0' / 'temperature_scaling.json').write_text('{}')
        (results / 'margin').mkdir()
        (results / 'margin' / 'margin.json').write_text(json.dumps({'margin': 12.3}))
    if before is not None:
        before(tmp_path / 'out')
    log = tmp_path / 'events.jsonl'
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


def _stopped_run(out, run, checkpoint_iter, started_ago, saved_ago):
    """The work dir of a run whose training was stopped after writing ``iter_<N>.pth``."""
    train = out / run / 'train'
    old = train / '20250101_000000' / 'vis_data'
    old.mkdir(parents=True)
    # it had logged beyond its checkpoint: those entries are redone by the resumed segment
    old.joinpath('scalars.json').write_text(''.join(
        json.dumps({'loss': 2.0, 'segment': 'stopped', 'step': step}) + '\n'
        for step in range(1, checkpoint_iter + 3)))
    checkpoint = train / f'iter_{checkpoint_iter}.pth'
    checkpoint.write_text('{}')
    (train / 'last_checkpoint').write_text(str(checkpoint))
    now = int(time.time())
    os.utime(checkpoint, (now - saved_ago, now - saved_ago))
    (out / run / 'segments').write_text(f'{now - started_ago} 0\n')
    (out / f'{run}.train.log').write_text('the stopped segment\n')


def test_stopped_runs_resume_from_their_checkpoint(tmp_path):
    """A run stopped mid-training resumes (``--resume``) and is not started afresh; one stopped
    after its training only runs its test. Its scalars are those of both segments, and its
    wall time counts the stopped segment up to the checkpoint it resumed from."""
    def stop_two_runs(out):
        _stopped_run(out, 'ce_s1', 4, started_ago=100, saved_ago=40)
        _stopped_run(out, 'cals_m10_s1', 8, started_ago=300, saved_ago=100)

    events, results = _run_study(tmp_path, 2, first_seed_done=True, before=stop_two_runs)
    started = [run for event, run, _ in events if event == 'start']
    resumed = [run for event, run, _ in events if event == 'resume']
    assert resumed == ['ce_s1']
    assert 'cals_m10_s1' not in started  # trained to the end already: only tested
    assert sorted(r for r in started if r in ALL_TRAINED) == sorted(
        set(OTHER_SEED_RUNS + ONE_SEED_RUNS) - {'cals_m10_s1'})

    rows = [json.loads(line) for line in
            (results / 'ce_s1' / 'train_scalars.json').read_text().splitlines()]
    train_rows = [r for r in rows if 'loss' in r]
    assert [r['step'] for r in train_rows] == list(range(1, 9))
    assert {r['segment'] for r in train_rows[:4]} == {'stopped'}
    assert 'stopped' not in {r['segment'] for r in train_rows[4:]}
    assert [r['step'] for r in rows if 'mIoU' in r] == [8]

    wall = json.loads((results / 'ce_s1' / 'wall_time.json').read_text())
    first, second = wall['segments']
    assert (first['from_iter'], first['to_iter'], first['seconds']) == (0, 4, 60)
    assert (second['from_iter'], second['to_iter']) == (4, 8)
    assert 0 <= second['seconds'] < 60
    assert wall['train_and_test_seconds'] == first['seconds'] + second['seconds']
    # where it ran: the kernels torch chose, from the training log
    assert wall['machine'].endswith(f', {os.cpu_count()} CPUs, torch kernels AVX2, 1 thread(s)')
    log = (results / 'ce_s1' / 'train.log').read_text()
    assert log.startswith('the stopped segment\n== resumed from iteration 4\n')

    wall = json.loads((results / 'cals_m10_s1' / 'wall_time.json').read_text())
    assert [(s['from_iter'], s['to_iter']) for s in wall['segments']] == [(0, 8), (8, 8)]
    assert wall['segments'][0]['seconds'] == 200


def test_a_second_study_in_the_same_folder_is_refused(tmp_path):
    """While a study (or runs it started) is going on in OUT, another start there would train
    the runs in flight a second time: it stops at once, with one line, exit code 2."""
    env = _study_env(tmp_path, SEEDS='0', JOBS='1')
    log = tmp_path / 'events.jsonl'
    first = subprocess.Popen(['bash', SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=60)
    finally:
        out, err = first.communicate(timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f'camvid_study.sh: another study is running in {tmp_path / "out"} (or its runs still '
        'are); wait for it, or stop it first']
    assert first.returncode == 0, out + err
    # and once the first has ended, the folder is free again (every run is skipped)
    again = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and 'skip ce_s0' in again.stdout


def test_each_temperature_follows_its_ce_run_at_once(tmp_path):
    """A session that cannot keep OUT loses its checkpoints, so the temperature, which needs
    the CE model, is fitted right after its CE run (one slot: the exact order of starts)."""
    events, _ = _run_study(tmp_path, 1, first_seed_done=False)
    started = [run for event, run, _ in events if event == 'start']
    assert started[:9] == ['ce_s0', 'ce_ts_s0', 'cals_m10_s0', 'logit_gaps', 'cals_chosen_s0',
                           'ce_s1', 'ce_ts_s1', 'cals_m10_s1', 'cals_chosen_s1']
    assert sorted(started[9:]) == sorted(ONE_SEED_RUNS)


def test_runs_does_only_the_named_runs(tmp_path):
    """RUNS shares a study out: only the named runs are trained (the temperature as
    ce_ts_sN), the rest is skipped with a line saying so, and with no CALS-chosen run named
    the margin is not measured (it would need the first seed's CE model)."""
    env = _study_env(tmp_path, SEEDS='0 1', JOBS='2', RUNS='ce_s1 ce_ts_s1 cals_m10_s1')
    proc = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in (tmp_path / 'events.jsonl').read_text().splitlines()]
    assert sorted(run for event, run, _ in events if event == 'start') == [
        'cals_m10_s1', 'ce_s1', 'ce_ts_s1']
    assert '== skip ce_s0 (not in RUNS)' in proc.stdout.splitlines()
    assert '== skip cals_chosen_s1 (not in RUNS)' in proc.stdout.splitlines()
    results = tmp_path / 'results'
    assert sorted(p.name for p in results.iterdir()) == ['cals_m10_s1', 'ce_s1', 'ce_ts_s1']


def test_a_model_gone_with_an_earlier_out_is_named(tmp_path):
    """CE results committed by an earlier study whose OUT is gone: the temperature (and the
    margin) cannot be fitted without the model. Each says so in one line naming the file and
    the fix; the other runs go on, and the study ends with a failure."""
    env = _study_env(tmp_path, SEEDS='0 1', JOBS='2', RUNS='ce_ts_s1 cals_m10_s1')
    ce_s1 = tmp_path / 'results' / 'ce_s1'
    ce_s1.mkdir(parents=True)
    (ce_s1 / 'wall_time.json').write_text('{}')
    proc = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    model = tmp_path / 'out' / 'ce_s1' / 'train' / 'iter_8.pth'
    assert (f'== ce_ts_s1 needs ce_s1\'s model {model}, not found: train ce_s1 in this OUT '
            f'first (results from another OUT: remove {ce_s1} to retrain it)'
            in proc.stderr.splitlines())
    assert (tmp_path / 'results' / 'cals_m10_s1' / 'wall_time.json').is_file()
    assert not (tmp_path / 'results' / 'ce_ts_s1').exists()

    env['RUNS'] = 'cals_chosen_s1'
    proc = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.splitlines()[-1].startswith(
        "== the margin needs ce_s0's model ")
    assert not (tmp_path / 'results' / 'cals_chosen_s1').exists()


def test_a_script_edited_during_a_study_does_not_change_it(tmp_path):
    """A study runs for hours; the script may be edited or pulled meanwhile. bash reads a
    script as it goes, so without care the running study would go on from the same byte
    offset of the new file (seen: it ran the study's loop a second time). Here the copy being
    run gets 2000 bytes more at its top while the first run trains: the study still does every
    run once and ends well."""
    script = tmp_path / 'camvid_study.sh'
    script.write_text(open(SCRIPT).read())
    env = _study_env(tmp_path, SEEDS='0', JOBS='1')
    log = tmp_path / 'events.jsonl'
    study = subprocess.Popen(['bash', str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        edited = '#!/usr/bin/env bash\n' + '# an edit\n' * 200 + open(SCRIPT).read()
        with open(script, 'r+') as f:  # in place, as an editor or git may write it
            f.write(edited)
    finally:
        out, err = study.communicate(timeout=300)
    assert study.returncode == 0, out + err
    started = [json.loads(line)[1] for line in log.read_text().splitlines()
               if json.loads(line)[0] == 'start']
    assert sorted(r for r in started if r in ALL_TRAINED) == sorted(
        ['ce_s0', 'cals_m10_s0', 'cals_chosen_s0'] + ONE_SEED_RUNS)
    # and nothing ran twice: the running study did not go on into the edited file
    assert '(results exist)' not in out, out
    assert out.count(' train ce_s0') == 1
    assert out.rstrip().splitlines()[-1].endswith(' done')


@pytest.mark.parametrize('iters, name', [('12000', '12k'), ('2500', '2500')])
def test_default_folders_are_named_after_the_schedule(tmp_path, iters, name):
    """Without OUT and RESULTS the folders are named after ITERS, so results of one schedule
    are never skipped over as another's (a run whose results exist is not trained again)."""
    env = _study_env(tmp_path, TABLES_ONLY='1')
    env['ITERS'] = iters
    del env['OUT'], env['RESULTS']
    out = osp.join(REPO, 'work_dirs', f'camvid_study_{name}')
    results = osp.join('docs', 'results', f'camvid_{name}')
    assert not osp.exists(out) and not osp.exists(osp.join(REPO, results))
    try:
        proc = subprocess.run(['bash', SCRIPT], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert osp.isdir(out) and osp.isdir(osp.join(REPO, results))
    finally:  # the script made them in the repository: remove them (empty) again
        for path in (out, osp.join(REPO, results)):
            if osp.isdir(path):
                os.rmdir(path)
    events = [json.loads(line) for line in (tmp_path / 'events.jsonl').read_text().splitlines()]
    assert [run for event, run, _ in events if event == 'report'] == [results]
