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
# (default 4000, which is configs/fast_scnn-*_1xb8-4k_camvid-128x128.py; the study's first
# schedule: ITERS=2000 OUT=work_dirs/camvid_study RESULTS=docs/results/camvid).
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
set -euo pipefail

ITERS=${ITERS:-4000}
SEEDS=${SEEDS:-"0 1 2"}
VAL_INTERVAL=${VAL_INTERVAL:-250}     # CE curves and CALS updates: ITERS / VAL_INTERVAL of them
JOBS=${JOBS:-2}
OUT=${OUT:-work_dirs/camvid_study_4k}
RESULTS=${RESULTS:-docs/results/camvid_4k}
COMMIT=${COMMIT:-0}
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

COMMON=(
  "train_cfg.max_iters=$ITERS" "param_scheduler.0.end=$ITERS"
  "default_hooks.checkpoint.interval=$ITERS" "default_hooks.logger.interval=50"
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

commit() {  # commit RUN: the run's results, alone, under a lock shared by parallel runs
  [ "$COMMIT" = 1 ] || return 0
  flock "$OUT/.commit.lock" sh -c "git add '$RESULTS/$1' && \
    git commit -q -m 'CamVid study: $1' -- '$RESULTS/$1'" || echo "== commit of $1 failed" >&2
}

collect() {  # collect RUN SECONDS: copy the small results of a finished run into RESULTS/RUN
  local run=$1 dir="$OUT/$1" res="$RESULTS/$1" tmp
  tmp="$RESULTS/.$run.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  cp "$(ls -t "$dir"/test/*/calibration/calibration.json | head -1)" "$tmp/calibration.json"
  local ts; ts=$(ls -t "$dir"/test/*/*.json | grep -v calibration | head -1)
  cp "$ts" "$tmp/test_metrics.json"
  cp "$(ls -t "$dir"/train/*/vis_data/scalars.json | head -1)" "$tmp/train_scalars.json"
  [ ! -f "$dir/train/cals_history.json" ] || cp "$dir/train/cals_history.json" "$tmp/"
  cp "$dir.train.log" "$tmp/train.log"
  printf '{"run": "%s", "train_and_test_seconds": %s, "iters": %s}\n' "$run" "$2" "$ITERS" \
    > "$tmp/wall_time.json"
  rm -rf "$res" && mv "$tmp" "$res"
}

train_and_test() {  # train_and_test RUN CONFIG SEED EXTRA_OPTIONS...
  local run=$1 config=$2 seed=$3 dir="$OUT/$1" start
  shift 3
  [ ! -f "$RESULTS/$run/wall_time.json" ] || { echo "== skip $run (results exist)"; return 0; }
  start=$(date +%s)
  echo "== $(date -u +%H:%M:%S) train $run"
  rm -rf "$dir"
  "$PYTHON" tools/train.py "$config" --work-dir "$dir/train" \
    --cfg-options "${COMMON[@]}" "randomness.seed=$seed" "$@" > "$dir.train.log" 2>&1 \
    || { echo "== $run: training failed, see $dir.train.log" >&2; return 1; }
  echo "== $(date -u +%H:%M:%S) test $run"
  "$PYTHON" tools/test.py "$config" "$dir/train/iter_$ITERS.pth" --work-dir "$dir/test" \
    --cfg-options "${COMMON[@]}" > "$dir.test.log" 2>&1 \
    || { echo "== $run: test failed, see $dir.test.log" >&2; return 1; }
  collect "$run" "$(( $(date +%s) - start ))"
  commit "$run"
  echo "== $(date -u +%H:%M:%S) done $run"
}

temperature() {  # temperature RUN FROM_RUN: fit T on the calibration part, report once
  local run=$1 from="$OUT/$2" res="$RESULTS/$1" start
  [ ! -f "$res/temperature_scaling.json" ] || { echo "== skip $run (results exist)"; return 0; }
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

if [ "$TABLES_ONLY" != 1 ]; then
  # First the two runs that need nothing else: CE (for the margin) and CALS at the paper's 10.
  launch train_and_test "ce_s$FIRST_SEED" "$(printf "$CFG" ce)" "$FIRST_SEED" "${VALIDATE[@]}"
  launch train_and_test "cals_m10_s$FIRST_SEED" "$(printf "$CFG" cals)" "$FIRST_SEED" \
    "${VALIDATE[@]}"
  drain
  MARGIN=$(chosen_margin)
  echo "== chosen margin: $MARGIN"
  launch temperature "ce_ts_s$FIRST_SEED" "ce_s$FIRST_SEED"
  launch train_and_test "cals_chosen_s$FIRST_SEED" "$(printf "$CFG" cals)" "$FIRST_SEED" \
    "${VALIDATE[@]}" "$(cals "$MARGIN")"
  for seed in $SEEDS; do
    [ "$seed" = "$FIRST_SEED" ] && continue
    launch train_and_test "ce_s$seed" "$(printf "$CFG" ce)" "$seed" "${VALIDATE[@]}"
    launch train_and_test "cals_m10_s$seed" "$(printf "$CFG" cals)" "$seed" "${VALIDATE[@]}"
    launch train_and_test "cals_chosen_s$seed" "$(printf "$CFG" cals)" "$seed" \
      "${VALIDATE[@]}" "$(cals "$MARGIN")"
  done
  drain  # the 3-seed tables (CE, CE + TS, both CALS) are complete before the 1-seed baselines
  for seed in $SEEDS; do
    [ "$seed" = "$FIRST_SEED" ] || launch temperature "ce_ts_s$seed" "ce_s$seed"
  done
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
