#!/usr/bin/env bash
# The converged CamVid calibration study (docs/results_camvid.md): Fast-SCNN from scratch with
# CE, LS, MbLS, FL, ECP, CE + temperature scaling, CALS with the paper's margin and CALS with
# a margin chosen on the calibration part, 'val' statistics source (and 'train' once).
#
#   tools/experiments/camvid_study.sh                      # from the repository root
#   CAMVID_ROOT=/data/camvid REPORT_ROOT=/data/other REPORT_SPLIT=test \
#       tools/experiments/camvid_study.sh                  # report on another split
#
# Split (nothing is fitted on the report split):
#   training part     CamVid train without sequence 0006R0 (0001TP + 0016E5, 266 images)
#   calibration part  CamVid train sequence 0006R0 (101 images): the validation loader during
#                     training (CALS's 'val' statistics, the CE convergence curve), the
#                     temperature's fit split and the split the chosen margin is measured on
#   report split      REPORT_ROOT (default: CAMVID_ROOT), a CamVid-layout folder: images in
#                     <REPORT_SPLIT>/, labels in <REPORT_SPLIT>annot/, "image label" pairs in
#                     <REPORT_SPLIT>.txt (default REPORT_SPLIT=val); every final checkpoint is
#                     evaluated on it once
# Model and schedule: configs/fast_scnn-*_1xb8-2k_camvid-128x128.py with max_iters=ITERS
# (default 16000, the schedule the study reports, which is
# configs/fast_scnn-*_1xb8-16k_camvid-128x128.py; OUT and RESULTS default to
# work_dirs/camvid_study_16k and docs/results/camvid_16k, after ITERS). Its earlier schedules:
# ITERS=4000 and ITERS=8000, and ITERS=2000 OUT=work_dirs/camvid_study RESULTS=docs/results/camvid.
#
# The chosen margin (rule fixed before any CALS run, docs/results_camvid.md): the 90th
# percentile of the logit gaps d = z_a - z_k over all (pixel, non-winner class) pairs of the
# first-seed CE model on the calibration part, measured by tools/analysis/logit_gaps.py and
# rounded to one decimal.
#
# Runs go JOBS at a time (default 2, one thread each: the fastest use of 2 cores, measured in
# docs/results_camvid.md). Checkpoints and logs stay in OUT; the small results of each finished
# run (calibration.json, test metrics, cals_history.json, the training scalars, wall times) are
# copied to RESULTS/<run>/ and, with COMMIT=1, committed at once, so a study that stops loses
# only the runs in flight. A run whose RESULTS/<run>/ is complete is skipped, and the tables
# and figures are regenerated from RESULTS alone (TABLES_ONLY=1 does only that).
#
# A run stopped mid-way (the machine or the session went away) resumes: every run keeps a
# checkpoint every CKPT_INTERVAL iterations (default 1000; the tools write them atomically and
# resume bit-identically, README "Training"), and when the script starts it again it passes
# --resume, so it loses at most CKPT_INTERVAL iterations. Its wall time is the sum of its
# segments, each counted up to the checkpoint the next one resumed from (the work after it was
# redone, and is not counted twice); a resumed segment includes mmengine's pass over the
# batches already trained. wall_time.json lists the segments.
#
# A session or machine that cannot keep OUT until the next one loses its checkpoints, so each
# CE run is followed at once, in the same job, by the temperature fitted to it (the only later
# step that needs a CE model besides the margin, which comes from the first seed's CE run
# before any run needs it). RUNS="ce_s1 cals_m10_s1" does only the named runs (ce_ts_sN for a
# temperature) and skips the rest, e.g. to share a study out between machines, each with its
# own OUT and one RESULTS; the margin is measured only if a CALS-chosen run is to be trained.
set -euo pipefail
# The whole script is one block, so bash reads all of it before running any: a study runs for
# hours, and a script edited (or pulled) meanwhile must not change what the running one does.
{

ITERS=${ITERS:-16000}
SEEDS=${SEEDS:-"0 1 2"}
VAL_INTERVAL=${VAL_INTERVAL:-250}     # CE curves and CALS updates: ITERS / VAL_INTERVAL of them
JOBS=${JOBS:-2}
CKPT_INTERVAL=${CKPT_INTERVAL:-1000}  # a stopped run resumes from its last checkpoint
# Default folders are named after the schedule (16k for 16000), so that results of one schedule
# are never taken for another's (a run whose results exist is skipped).
SCHEDULE=$ITERS; [ $(( ITERS % 1000 )) != 0 ] || SCHEDULE=$(( ITERS / 1000 ))k
OUT=${OUT:-work_dirs/camvid_study_$SCHEDULE}
RESULTS=${RESULTS:-docs/results/camvid_$SCHEDULE}
COMMIT=${COMMIT:-0}
RUNS=${RUNS:-}
TABLES_ONLY=${TABLES_ONLY:-0}
export CAMVID_ROOT=${CAMVID_ROOT:-data/camvid}
REPORT_ROOT=${REPORT_ROOT:-$CAMVID_ROOT}
REPORT_SPLIT=${REPORT_SPLIT:-val}
PYTHON=${PYTHON:-.venv/bin/python}
# One thread per process: on a small shared CPU, several OpenMP threads per process spin against
# each other and other jobs (measured: 4x slower per iteration on 2 busy cores).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CALIBRATION_SEQUENCE=0006R0
CFG=configs/fast_scnn-%s_1xb8-2k_camvid-128x128.py
FIRST_SEED=${SEEDS%% *}

for d in "$CAMVID_ROOT/train" "$REPORT_ROOT/$REPORT_SPLIT" "$REPORT_ROOT/${REPORT_SPLIT}annot"; do
  [ "$TABLES_ONLY" = 1 ] || [ -d "$d" ] || {
    echo "camvid_study.sh: $d not found; set CAMVID_ROOT / REPORT_ROOT (README: CamVid)" >&2
    exit 2; }
done
[ -f "$REPORT_ROOT/$REPORT_SPLIT.txt" ] || [ "$TABLES_ONLY" = 1 ] || {
  echo "camvid_study.sh: $REPORT_ROOT/$REPORT_SPLIT.txt not found (the report split's list)" >&2
  exit 2; }
mkdir -p "$OUT" "$RESULTS"
# One study per OUT: a second one would start the runs in flight again. The lock goes with
# the runs (their processes inherit it), so a study whose script was stopped while its runs
# finish also counts as running.
if [ "$TABLES_ONLY" != 1 ]; then
  exec 9> "$OUT/.study.lock"
  flock -n 9 || {
    echo "camvid_study.sh: another study is running in $OUT (or its runs still are);" \
      "wait for it, or stop it first" >&2
    exit 2; }
fi

COMMON=(
  "train_cfg.max_iters=$ITERS" "param_scheduler.0.end=$ITERS"
  "default_hooks.checkpoint.interval=$CKPT_INTERVAL" "default_hooks.checkpoint.max_keep_ckpts=1"
  "default_hooks.logger.interval=50"
  "train_dataloader.num_workers=1" "val_dataloader.num_workers=1"
  "val_dataloader.persistent_workers=False" "test_dataloader.num_workers=1"
  "train_dataloader.dataset.exclude_sequences=[$CALIBRATION_SEQUENCE]"
  "val_dataloader.dataset.ann_file=train.txt"
  "val_dataloader.dataset.data_prefix.img_path=train"
  "val_dataloader.dataset.data_prefix.seg_map_path=trainannot"
  "val_dataloader.dataset.sequences=[$CALIBRATION_SEQUENCE]"
  "test_dataloader.dataset.data_root=$REPORT_ROOT"
  "test_dataloader.dataset.ann_file=$REPORT_SPLIT.txt"
  "test_dataloader.dataset.data_prefix.img_path=$REPORT_SPLIT"
  "test_dataloader.dataset.data_prefix.seg_map_path=${REPORT_SPLIT}annot"
)
# EXTRA_OPTIONS: more --cfg-options for every run, e.g. quick checks on a few images:
#   EXTRA_OPTIONS="train_dataloader.dataset.indices=8 val_dataloader.dataset.indices=4"
read -r -a EXTRA <<< "${EXTRA_OPTIONS:-}"
COMMON+=("${EXTRA[@]}")
VALIDATE=("train_cfg.val_interval=$VAL_INTERVAL")
NO_VALIDATION=("train_cfg.val_interval=$ITERS" "train_cfg.val_begin=$(( ITERS + 1 ))")

commit() {  # commit RUN: the run's results, alone, under the repository's lock for studies
  [ "$COMMIT" = 1 ] || return 0
  flock "$(git rev-parse --git-dir)/camvid-study-commit.lock" sh -c "git add '$RESULTS/$1' && \
    git commit -q -m 'CamVid study: $1' -- '$RESULTS/$1'" || echo "== commit of $1 failed" >&2
}

collect() {  # collect RUN: copy the small results of a finished run into RESULTS/RUN
  local run=$1 dir="$OUT/$1" res="$RESULTS/$1" tmp
  tmp="$RESULTS/.$run.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  cp "$(ls -t "$dir"/test/*/calibration/calibration.json | head -1)" "$tmp/calibration.json"
  local ts; ts=$(ls -t "$dir"/test/*/*.json | grep -v calibration | head -1)
  cp "$ts" "$tmp/test_metrics.json"
  [ ! -f "$dir/train/cals_history.json" ] || cp "$dir/train/cals_history.json" "$tmp/"
  cp "$dir.train.log" "$tmp/train.log"
  # The training scalars of every segment, oldest first (mmengine starts a timestamped folder
  # per start); an entry that a later segment logged again (after the checkpoint it resumed
  # from) is taken from the later one. And the wall time, from the segments.
  "$PYTHON" - "$dir" "$tmp" "$run" "$ITERS" "$(date +%s)" <<'PY'
import glob, json, os, sys
run_dir, out, run, iters, now = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
entries = {}
for path in sorted(glob.glob(os.path.join(run_dir, 'train', '*', 'vis_data', 'scalars.json'))):
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                entries[('loss' in row, row.get('step'))] = row  # later segments win
rows = sorted(entries.values(), key=lambda r: (r.get('step', 0), 'loss' not in r))
with open(os.path.join(out, 'train_scalars.json'), 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in rows)
segments = []
with open(os.path.join(run_dir, 'segments')) as f:
    for line in f:
        start, first, end, last = (line.split() + ['', ''])[:4]
        segments.append({'from_iter': int(first), 'seconds': (int(end) if end else now) - int(start),
                         'to_iter': int(last) if last else iters})
# Where it ran: wall times of runs made on different machines do not compare (the kernels
# torch picks, AVX2 or AVX-512, also change the floats: docs/stack.md section 6).
model = ''
if os.path.isfile('/proc/cpuinfo'):
    model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo')
                  if l.startswith('model name')), '')
kernels = []
for line in open(run_dir + '.train.log', errors='replace'):
    if 'CPU capability usage:' in line:
        value = line.split(':', 1)[1].strip()
        kernels += [] if value in kernels else [value]
machine = (f"{model or 'CPU'}, {os.cpu_count()} CPUs, torch kernels {'/'.join(kernels) or '?'}, "
           f"{os.environ.get('OMP_NUM_THREADS', '?')} thread(s)")
json.dump({'run': run, 'train_and_test_seconds': sum(s['seconds'] for s in segments),
           'iters': iters, 'segments': segments, 'machine': machine},
          open(os.path.join(out, 'wall_time.json'), 'w'))
PY
  rm -rf "$res" && mv "$tmp" "$res"
}

checkpoint_iter() {  # checkpoint_iter TRAIN_DIR: iteration of the checkpoint a resume takes, or nothing
  local pointer="$1/last_checkpoint" path
  [ -f "$pointer" ] || return 0
  path=$(cat "$pointer")
  [ -f "$path" ] || return 0
  basename "$path" .pth | sed -n 's/^iter_\([0-9]*\)$/\1/p'
}

listed() {  # listed RUN: whether RUNS (when set) names RUN
  [ -z "$RUNS" ] || [[ " $RUNS " == *" $1 "* ]]
}

wanted() {  # wanted RUN: whether this study is to train RUN (not done yet, and listed)
  [ ! -f "$RESULTS/$1/wall_time.json" ] && listed "$1"
}

train_and_test() {  # train_and_test RUN CONFIG SEED EXTRA_OPTIONS...
  local run=$1 config=$2 seed=$3 dir="$OUT/$1" start
  shift 3
  local resumed_at previous saved
  [ ! -f "$RESULTS/$run/wall_time.json" ] || { echo "== skip $run (results exist)"; return 0; }
  listed "$run" || { echo "== skip $run (not in RUNS)"; return 0; }
  start=$(date +%s)
  resumed_at=$(checkpoint_iter "$dir/train")
  if [ -n "$resumed_at" ] && [ -f "$dir/segments" ]; then
    # A stopped run: its last segment counts up to the checkpoint this one resumes from (and
    # not at all if it wrote none: its work is all redone).
    previous=$(tail -1 "$dir/segments")
    saved=$(stat -c %Y "$(cat "$dir/train/last_checkpoint")")
    sed -i '$d' "$dir/segments"
    [ "$saved" -lt "${previous%% *}" ] || echo "$previous $saved $resumed_at" >> "$dir/segments"
    echo "$start $resumed_at" >> "$dir/segments"
    echo "== $(date -u +%H:%M:%S) resume $run from iteration $resumed_at"
    echo "== resumed from iteration $resumed_at" >> "$dir.train.log"
  else
    resumed_at=
    rm -rf "$dir" "$dir.train.log"
    mkdir -p "$dir"
    echo "$start 0" > "$dir/segments"
    echo "== $(date -u +%H:%M:%S) train $run"
  fi
  if [ "$resumed_at" != "$ITERS" ]; then
    "$PYTHON" tools/train.py "$config" --work-dir "$dir/train" ${resumed_at:+--resume} \
      --cfg-options "${COMMON[@]}" "randomness.seed=$seed" "$@" >> "$dir.train.log" 2>&1 \
      || { echo "== $run: training failed, see $dir.train.log" >&2; return 1; }
  fi
  echo "== $(date -u +%H:%M:%S) test $run"
  "$PYTHON" tools/test.py "$config" "$dir/train/iter_$ITERS.pth" --work-dir "$dir/test" \
    --cfg-options "${COMMON[@]}" > "$dir.test.log" 2>&1 \
    || { echo "== $run: test failed, see $dir.test.log" >&2; return 1; }
  collect "$run"
  commit "$run"
  echo "== $(date -u +%H:%M:%S) done $run"
}

need_model() {  # need_model WHO RUN: RUN's final checkpoint is in OUT, or one line says why not
  local model="$OUT/$2/train/iter_$ITERS.pth"
  [ -f "$model" ] || {
    echo "== $1 needs $2's model $model, not found: train $2 in this OUT first (results" \
      "from another OUT: remove $RESULTS/$2 to retrain it)" >&2
    return 1; }
}

temperature() {  # temperature RUN FROM_RUN: fit T on the calibration part, report once
  local run=$1 from="$OUT/$2" res="$RESULTS/$1" start
  [ ! -f "$res/temperature_scaling.json" ] || { echo "== skip $run (results exist)"; return 0; }
  listed "$run" || { echo "== skip $run (not in RUNS)"; return 0; }
  need_model "$run" "$2" || return 1
  start=$(date +%s)
  echo "== $(date -u +%H:%M:%S) temperature scaling $run"
  "$PYTHON" tools/analysis/temperature_scaling.py "$(printf "$CFG" ce)" \
    "$from/train/iter_$ITERS.pth" --fit-split val --eval-split test --work-dir "$OUT/$run" \
    --device cpu --cfg-options "${COMMON[@]}" > "$OUT/$run.log" 2>&1 \
    || { echo "== $run: failed, see $OUT/$run.log" >&2; return 1; }
  mkdir -p "$res.partial"
  cp "$OUT/$run/temperature_scaling.json" "$(ls -t "$OUT/$run"/calibration.json \
    "$OUT/$run"/*/calibration/calibration.json 2>/dev/null | head -1)" "$res.partial/"
  printf '{"run": "%s", "fit_and_test_seconds": %s}\n' "$run" "$(( $(date +%s) - start ))" \
    > "$res.partial/wall_time.json"
  rm -rf "$res" && mv "$res.partial" "$res"
  commit "$run"
}

chosen_margin() {  # measure the first-seed CE model's gaps on the calibration part, once
  local res="$RESULTS/margin" ce="$OUT/ce_s$FIRST_SEED"
  if [ ! -f "$res/margin.json" ]; then
    need_model "the margin" "ce_s$FIRST_SEED" || return 1
    echo "== $(date -u +%H:%M:%S) logit gaps of ce_s$FIRST_SEED on the calibration part" >&2
    "$PYTHON" tools/analysis/logit_gaps.py "$(printf "$CFG" ce)" "$ce/train/iter_$ITERS.pth" \
      --split val --quantiles 0.5 0.9 0.99 --margins 5 10 20 --work-dir "$OUT/logit_gaps" \
      --out-dir "$res.partial" --cfg-options "${COMMON[@]}" > "$OUT/logit_gaps.log" 2>&1 \
      || { echo "== logit_gaps failed, see $OUT/logit_gaps.log" >&2; return 1; }
    "$PYTHON" - "$res.partial" <<'PY'
import json, sys
d = sys.argv[1]
gaps = json.load(open(f'{d}/logit_gaps.json'))
p90 = gaps['all']['gap_at_quantile']['0.9']
json.dump({'rule': '90th percentile of the first-seed CE gaps on the calibration part, '
                   'rounded to one decimal', 'gap_p90': p90, 'margin': round(p90, 1)},
          open(f'{d}/margin.json', 'w'), indent=1)
PY
    rm -rf "$res" && mv "$res.partial" "$res"
    commit margin
  fi
  "$PYTHON" -c "import json; print(json.load(open('$res/margin.json'))['margin'])"
}

# A job queue: at most JOBS runs at once; a failed run is reported and the others go on.
failed=0
# (wait -n may return for a job that had already finished, e.g. a skipped run, hence the loop.)
pending() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done; }
launch() { pending; "$@" & }
drain() { while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done; }

cals() { local m=$1; echo "model.decode_head.loss_decode.1.margin=$m"; }
CALS_TRAIN=("custom_hooks.0.source=train" "custom_hooks.0.interval=$VAL_INTERVAL")

ce_and_temperature() {  # ce_and_temperature SEED: CE, then at once the temperature fitted to it
  train_and_test "ce_s$1" "$(printf "$CFG" ce)" "$1" "${VALIDATE[@]}" || return 1
  temperature "ce_ts_s$1" "ce_s$1"
}

if [ "$TABLES_ONLY" != 1 ]; then
  # First the two runs that need nothing else: CE (for the margin) and CALS at the paper's 10.
  launch ce_and_temperature "$FIRST_SEED"
  launch train_and_test "cals_m10_s$FIRST_SEED" "$(printf "$CFG" cals)" "$FIRST_SEED" \
    "${VALIDATE[@]}"
  any_chosen=0
  for seed in $SEEDS; do
    ! wanted "cals_chosen_s$seed" || any_chosen=1
  done
  if [ "$any_chosen" = 1 ]; then
    # The margin needs the first seed's CE model: wait for it (the CALS-m10 run may go on).
    while [ ! -f "$RESULTS/ce_s$FIRST_SEED/wall_time.json" ] && [ "$(jobs -rp | wc -l)" -gt 0 ]
    do wait -n || failed=1; done
    pending  # the measurement takes a slot of its own
    MARGIN=$(chosen_margin)
    echo "== chosen margin: $MARGIN"
  fi
  MARGIN=${MARGIN:-none}  # (no CALS-chosen run is to be trained: each says why it is skipped)
  launch train_and_test "cals_chosen_s$FIRST_SEED" "$(printf "$CFG" cals)" "$FIRST_SEED" \
    "${VALIDATE[@]}" "$(cals "$MARGIN")"
  for seed in $SEEDS; do
    [ "$seed" = "$FIRST_SEED" ] && continue
    launch ce_and_temperature "$seed"
    launch train_and_test "cals_m10_s$seed" "$(printf "$CFG" cals)" "$seed" "${VALIDATE[@]}"
    launch train_and_test "cals_chosen_s$seed" "$(printf "$CFG" cals)" "$seed" \
      "${VALIDATE[@]}" "$(cals "$MARGIN")"
  done
  drain  # the 3-seed tables (CE, CE + TS, both CALS) are complete before the 1-seed baselines
  for m in ls mbls focal ecp; do
    launch train_and_test "${m}_s$FIRST_SEED" "$(printf "$CFG" $m)" "$FIRST_SEED" \
      "${NO_VALIDATION[@]}"
  done
  launch train_and_test "cals_train_m10_s$FIRST_SEED" "$(printf "$CFG" cals)" "$FIRST_SEED" \
    "${NO_VALIDATION[@]}" "${CALS_TRAIN[@]}"
  drain
fi

# Tables and figures, from RESULTS alone.
"$PYTHON" tools/experiments/camvid_report.py "$RESULTS" --seeds $SEEDS \
  --camvid-root "$CAMVID_ROOT" --exclude-sequences "$CALIBRATION_SEQUENCE"
[ "$failed" = 0 ] || { echo "== some runs failed (see the messages above)" >&2; exit 1; }
echo "== $(date -u +%H:%M:%S) done"
exit 0
}
