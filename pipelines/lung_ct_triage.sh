#!/usr/bin/env bash
# Lung CT tumour triage end to end with the medeff CLI:
#   medeff crops (world mm -> 3D crops) -> medeff predict (3D nodule classifier) -> medeff evaluate -> medeff report
# When no checkpoint is given, a small classifier is first trained on phantom data:
#   medeff crops --demo-data -> medeff index -> medeff train experiment=nodule_3d
#
# Usage (from the repository root):
#   pipelines/lung_ct_triage.sh [POSITIONS] [OUT_DIR] [CKPT] [train overrides ...]
#
#   POSITIONS  a CSV of nodule/tumour positions: series, x_mm, y_mm, z_mm (world LPS mm) [, size_mm, label,
#              patient_id] (see docs/workflows/lung_ct_triage.md; extra `medeff crops` options in CROPS_OVERRIDES);
#              "lung-pet-ct-dx" (default): $DATA_DIR/tumor_bboxes.csv, per-slice pixel boxes merged per tumour,
#              DATA_DIR = ${MEDEFF_SHARED_DATA:-../shared/data}/chest_ct_lung_pet_ct_dx;
#              "demo": phantom test scans with labelled nodules (written under OUT_DIR/demo_test)
#   OUT_DIR    output folder (default: lung_triage_out); must not hold a previous run
#   CKPT       a 3D nodule classifier checkpoint (medeff train experiment=nodule_3d); empty: train a demo one
#   train overrides  Hydra overrides appended to the demo `medeff train` (also read from $MEDEFF_PIPELINE_OVERRIDES)
#
# Environment: MEDEFF (the medeff command), CROPS_OVERRIDES, MEDEFF_PREDICT_OVERRIDES, MEDEFF_EVALUATE_OVERRIDES
# (space-separated key=value lists without spaces inside values), and the variables of pipelines/lung_ct_triage.conf.
# Outputs: OUT_DIR/crops/{crops.csv,crops/*.nii.gz}, predict/predictions.csv (the triage table: one row per tumour,
# probabilities, score, threshold, decision), report/{report.html,report.pdf,results.json,summary.json,
# metrics.csv,per_case.csv}, timings.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DATA_DIR="${DATA_DIR:-${MEDEFF_SHARED_DATA:-$ROOT/../shared/data}/chest_ct_lung_pet_ct_dx}"
# shellcheck source=lung_ct_triage.conf
source "$HERE/lung_ct_triage.conf"
# shellcheck source=common.sh
source "$HERE/common.sh"

POSITIONS="${1:-lung-pet-ct-dx}"
OUT="${2:-lung_triage_out}"
CKPT="${3:-}"
shift $(( $# < 3 ? $# : 3 ))
read -r -a CROPS_ARGS <<< "${CROPS_OVERRIDES:-}"

start_timings "$OUT"

# 0. a demo classifier when no checkpoint is given
if [[ -z "$CKPT" ]]; then
  step demo_train_data
  "$MEDEFF" crops --demo-data "$OUT/demo_train/nodules.csv" "$OUT/demo_train_crops" "demo.scans=$DEMO_TRAIN_SCANS" \
    demo.seed=0
  "$MEDEFF" index "$OUT/demo_train_crops/crops.csv" "$OUT/demo_train_index.json" "class_names=[benign,$POSITIVE_CLASS]"
  done_step
  step demo_train
  "$MEDEFF" train experiment=nodule_3d "data.index=$OUT/demo_train_index.json" "run_dir=$OUT/train" \
    trainer.accelerator=cpu "task.threshold=$THRESHOLD" "${TRAIN_OVERRIDES[@]}" "${ENV_OVERRIDES[@]}" "$@"
  CKPT="$OUT/train/checkpoints/last.ckpt"
  done_step
fi

# 1. crops around every position
step crops
case "$POSITIONS" in
  demo)
    "$MEDEFF" crops --demo-data "$OUT/demo_test/nodules.csv" "$OUT/crops" "demo.scans=$DEMO_TEST_SCANS" demo.seed=1 \
      "${CROPS_ARGS[@]}" ;;
  lung-pet-ct-dx)
    "$MEDEFF" crops "$DATA_DIR/tumor_bboxes.csv" "$OUT/crops" "${LUNG_DX_CROPS_OVERRIDES[@]}" "${CROPS_ARGS[@]}" ;;
  *)
    "$MEDEFF" crops "$POSITIONS" "$OUT/crops" "${CROPS_ARGS[@]}" ;;
esac
done_step

# 2. classify every crop: probabilities and the triage decision at the operating point
step predict
# the crops are named by medeff crops (running numbers, no input names): keep them as case ids to join crops.csv
"$MEDEFF" predict "ckpt=$CKPT" "input=$OUT/crops/crops" "output_dir=$OUT/predict" "threshold=$THRESHOLD" \
  case_ids.naming=input "${PREDICT_OVERRIDES[@]}"
done_step

# 3. triage report: ROC analysis when both classes are present; otherwise a listing with what is estimable
step evaluate
"$MEDEFF" evaluate kind=classification "classification.predictions=$OUT/predict/predictions.csv" \
  "classification.references=$OUT/crops/crops.csv" classification.columns.scores=score \
  classification.columns.group=patient_id "classification.positive_label=$POSITIVE_CLASS" \
  classification.unit=nodule "classification.threshold=$THRESHOLD" render=false "output_dir=$OUT/report" \
  "title=Lung CT triage: malignancy probability per nodule" "${EVALUATE_OVERRIDES[@]}"
done_step
step report
"$MEDEFF" report "results=$OUT/report/results.json" "output_dir=$OUT/report"
done_step
echo "total $SECONDS s" >> "$TIMES"
echo "lung triage finished in ${SECONDS} s: triage table $OUT/predict/predictions.csv; report $OUT/report/report.html"
