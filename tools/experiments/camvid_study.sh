#!/usr/bin/env bash
# CamVid calibration study (docs/results_camvid.md): CE, LS, MbLS, FL, ECP, CE + temperature
# scaling and CALS with the 'val' and the 'train' statistics source, one model, one schedule.
#
#   tools/experiments/camvid_study.sh            # from the repository root
#   ITERS=360 SEEDS="0 1" OUT=work_dirs/camvid_study CAMVID_ROOT=/data/camvid \
#       EXTRA_MARGIN=5 tools/experiments/camvid_study.sh
#
# Split (nothing is fitted on CamVid val):
#   training part     CamVid train without sequence 0006R0 (0001TP + 0016E5, 266 images)
#   calibration part  CamVid train sequence 0006R0 (101 images): the validation loader during
#                     training, i.e. CALS's 'val' statistics, and the temperature's fit split
#   report            CamVid val (101 images of 0016E5), evaluated once per final checkpoint
# Model: configs/deeplabv3_r18_*_camvid.py (DeepLabV3-R18-D8 from scratch, 128x128 crops of
# images resized to ~240x180, batch 4), with max_iters=ITERS and the poly schedule ending there.
#
# CE and CALS-val run once per seed in SEEDS, the other methods with the first seed. A run whose
# outputs exist is skipped, so an interrupted study continues where it stopped (remove OUT to
# start over). Wall times go to $OUT/times.tsv; the table and the overlaid reliability curves
# to $OUT/comparison/ (one row per run: $OUT/comparison_runs/), CALS's final λ per class to
# $OUT/lambda_table.md.
set -euo pipefail

ITERS=${ITERS:-360}
SEEDS=${SEEDS:-"0 1"}
UPDATES=${UPDATES:-4}                 # CALS multiplier updates per run
EXTRA_MARGIN=${EXTRA_MARGIN:-}        # if set: one more CALS-val run (first seed), this margin
OUT=${OUT:-work_dirs/camvid_study}
export CAMVID_ROOT=${CAMVID_ROOT:-data/camvid}
PYTHON=${PYTHON:-.venv/bin/python}
# One thread per process: on a small shared CPU, several OpenMP threads per process spin against
# each other and other jobs (measured: 4x slower per iteration on 2 busy cores).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CALIBRATION_SEQUENCE=0006R0

INTERVAL=$(( ITERS / UPDATES ))
FIRST_SEED=${SEEDS%% *}
mkdir -p "$OUT"
[ -f "$OUT/times.tsv" ] || printf 'run\tstep\tseconds\n' > "$OUT/times.tsv"

COMMON=(
  "train_cfg.max_iters=$ITERS" "param_scheduler.0.end=$ITERS"
  "default_hooks.checkpoint.interval=$ITERS" "default_hooks.logger.interval=50"
  "train_dataloader.num_workers=1" "val_dataloader.num_workers=1"
  "test_dataloader.num_workers=1"
  "train_dataloader.dataset.exclude_sequences=[$CALIBRATION_SEQUENCE]"
  "val_dataloader.dataset.ann_file=train.txt"
  "val_dataloader.dataset.data_prefix.img_path=train"
  "val_dataloader.dataset.data_prefix.seg_map_path=trainannot"
  "val_dataloader.dataset.sequences=[$CALIBRATION_SEQUENCE]"
)
# Validation (on the calibration part) is only needed where CALS updates from it.
VALIDATE=("train_cfg.val_interval=$INTERVAL")
NO_VALIDATION=("train_cfg.val_interval=$ITERS" "train_cfg.val_begin=$(( ITERS + 1 ))")

timed() {  # timed RUN STEP COMMAND...: run it, append the wall seconds to times.tsv
  local run=$1 step=$2 start
  shift 2
  start=$(date +%s)
  "$@"
  printf '%s\t%s\t%s\n' "$run" "$step" "$(( $(date +%s) - start ))" >> "$OUT/times.tsv"
}

train_and_test() {  # train_and_test RUN CONFIG SEED EXTRA_OPTIONS...
  local run=$1 config=$2 seed=$3 dir="$OUT/$1"
  shift 3
  if [ ! -f "$dir/train/iter_$ITERS.pth" ]; then
    echo "== $(date -u +%H:%M:%S) train $run"
    timed "$run" train "$PYTHON" tools/train.py "$config" --work-dir "$dir/train" \
      --cfg-options "${COMMON[@]}" "randomness.seed=$seed" "$@" > "$dir.train.log" 2>&1
  fi
  if [ -z "$(find "$dir/test" -name calibration.json 2>/dev/null)" ]; then
    echo "== $(date -u +%H:%M:%S) test $run"
    timed "$run" test "$PYTHON" tools/test.py "$config" "$dir/train/iter_$ITERS.pth" \
      --work-dir "$dir/test" --cfg-options "test_dataloader.num_workers=1" \
      > "$dir.test.log" 2>&1
  fi
}

temperature() {  # temperature RUN FROM_RUN: fit T on the calibration part, report on CamVid val
  local run=$1 from="$OUT/$2"
  if [ ! -f "$OUT/$run/temperature_scaling.json" ]; then
    echo "== $(date -u +%H:%M:%S) temperature scaling $run"
    timed "$run" fit+test "$PYTHON" tools/analysis/temperature_scaling.py \
      configs/deeplabv3_r18_ce_camvid.py "$from/train/iter_$ITERS.pth" \
      --fit-split val --eval-split test --work-dir "$OUT/$run" --device cpu \
      --cfg-options "${COMMON[@]}" > "$OUT/$run.log" 2>&1
  fi
}

CALS_TRAIN=("custom_hooks.0.source=train" "custom_hooks.0.interval=$INTERVAL")

# Order: one run of every method first, the second seeds last.
train_and_test "ce_s$FIRST_SEED" configs/deeplabv3_r18_ce_camvid.py "$FIRST_SEED" "${NO_VALIDATION[@]}"
temperature "ce_ts_s$FIRST_SEED" "ce_s$FIRST_SEED"
train_and_test "cals_val_s$FIRST_SEED" configs/deeplabv3_r18_cals_camvid.py "$FIRST_SEED" "${VALIDATE[@]}"
train_and_test "ls_s$FIRST_SEED" configs/deeplabv3_r18_ls_camvid.py "$FIRST_SEED" "${NO_VALIDATION[@]}"
train_and_test "mbls_s$FIRST_SEED" configs/deeplabv3_r18_mbls_camvid.py "$FIRST_SEED" "${NO_VALIDATION[@]}"
train_and_test "fl_s$FIRST_SEED" configs/deeplabv3_r18_focal_camvid.py "$FIRST_SEED" "${NO_VALIDATION[@]}"
train_and_test "ecp_s$FIRST_SEED" configs/deeplabv3_r18_ecp_camvid.py "$FIRST_SEED" "${NO_VALIDATION[@]}"
train_and_test "cals_train_s$FIRST_SEED" configs/deeplabv3_r18_cals_camvid.py "$FIRST_SEED" \
  "${NO_VALIDATION[@]}" "${CALS_TRAIN[@]}"
for seed in $SEEDS; do
  [ "$seed" = "$FIRST_SEED" ] && continue
  train_and_test "ce_s$seed" configs/deeplabv3_r18_ce_camvid.py "$seed" "${NO_VALIDATION[@]}"
  temperature "ce_ts_s$seed" "ce_s$seed"
  train_and_test "cals_val_s$seed" configs/deeplabv3_r18_cals_camvid.py "$seed" "${VALIDATE[@]}"
done

if [ -n "$EXTRA_MARGIN" ]; then
  train_and_test "cals_val_m${EXTRA_MARGIN}_s$FIRST_SEED" configs/deeplabv3_r18_cals_camvid.py \
    "$FIRST_SEED" "${VALIDATE[@]}" "model.decode_head.loss_decode.1.margin=$EXTRA_MARGIN" \
    "model.auxiliary_head.loss_decode.1.margin=$EXTRA_MARGIN"
fi

# The comparison: every method's runs under one name (mean ± half the range over seeds).
dirs=() names=()
add() { dirs+=("$1") names+=("$2"); }
for seed in $SEEDS; do add "$OUT/ce_s$seed/test" CE; done
add "$OUT/ls_s$FIRST_SEED/test" LS
add "$OUT/mbls_s$FIRST_SEED/test" MbLS
add "$OUT/fl_s$FIRST_SEED/test" FL
add "$OUT/ecp_s$FIRST_SEED/test" ECP
for seed in $SEEDS; do add "$OUT/ce_ts_s$seed" CE+TS; done
for seed in $SEEDS; do add "$OUT/cals_val_s$seed/test" CALS-val; done
add "$OUT/cals_train_s$FIRST_SEED/test" CALS-train
[ -z "$EXTRA_MARGIN" ] || add "$OUT/cals_val_m${EXTRA_MARGIN}_s$FIRST_SEED/test" "CALS-val-m$EXTRA_MARGIN"
"$PYTHON" tools/analysis/compare_calibration.py "${dirs[@]}" --names "${names[@]}" \
  --out-dir "$OUT/comparison"
# The same runs one per row, to show what the seed spread is made of.
run_names=()
for d in "${dirs[@]}"; do n=${d#"$OUT"/}; run_names+=("${n%/test}"); done
"$PYTHON" tools/analysis/compare_calibration.py "${dirs[@]}" --names "${run_names[@]}" \
  --out-dir "$OUT/comparison_runs"

histories=()
for seed in $SEEDS; do histories+=("CALS-val s$seed=$OUT/cals_val_s$seed/train/cals_history.json"); done
histories+=("CALS-train s$FIRST_SEED=$OUT/cals_train_s$FIRST_SEED/train/cals_history.json")
[ -z "$EXTRA_MARGIN" ] || histories+=(
  "CALS-val-m$EXTRA_MARGIN s$FIRST_SEED=$OUT/cals_val_m${EXTRA_MARGIN}_s$FIRST_SEED/train/cals_history.json")
"$PYTHON" tools/experiments/camvid_lambda_table.py "${histories[@]}" \
  --camvid-root "$CAMVID_ROOT" --exclude-sequences "$CALIBRATION_SEQUENCE" \
  | tee "$OUT/lambda_table.md"
echo "== $(date -u +%H:%M:%S) done; wall times in $OUT/times.tsv"
