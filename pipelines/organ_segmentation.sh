#!/usr/bin/env bash
# Organ segmentation end to end with the medeff CLI:
#   medeff index -> medeff train experiment=organ_seg_3d -> medeff predict (DICOM series) -> medeff evaluate
#   -> medeff report
#
# Usage (from the repository root):
#   pipelines/organ_segmentation.sh [TRAIN_SOURCE] [DICOM_DIR] [REFERENCE_LABELS] [OUT_DIR] [train overrides ...]
#
#   TRAIN_SOURCE      a dataset index (.json, used as it is), or anything `medeff index` reads (NIfTI folder, CSV
#                     manifest), indexed with the label subset of organ_segmentation.conf; "default" (or empty):
#                     example_ct.nii.gz + example_seg_fast_force_split.nii.gz (training, fold 1) and
#                     example_ct_sm.nii.gz + example_seg.nii.gz (validation monitor, fold 0) from
#                     $DATA_DIR = ${MEDEFF_SHARED_DATA:-../shared/data}/ct_organs_totalsegmentator
#   DICOM_DIR         DICOM series to segment (default: $DATA_DIR/example_ct_dicom)
#   REFERENCE_LABELS  reference label map of that series (default: $DATA_DIR/example_seg_dicom.nii.gz); "none"
#                     skips evaluate/report
#   OUT_DIR           output folder (default: organ_seg_out); must not hold a previous run
#   train overrides   Hydra overrides appended to `medeff train` (also read from $MEDEFF_PIPELINE_OVERRIDES)
#
# Environment: MEDEFF (the medeff command), CKPT (skip training, use this checkpoint), MEDEFF_PREDICT_OVERRIDES,
# MEDEFF_EVALUATE_OVERRIDES, and every variable of pipelines/organ_segmentation.conf.
# Outputs: OUT_DIR/index.json, train/checkpoints/last.ckpt, predict/case_<id>_seg.nii.gz (on the DICOM grid),
# report/{results.json,summary.json,metrics.csv,per_case.csv,report.html,report.pdf}, timings.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
DATA_DIR="${DATA_DIR:-${MEDEFF_SHARED_DATA:-$ROOT/../shared/data}/ct_organs_totalsegmentator}"
# shellcheck source=organ_segmentation.conf
source "$HERE/organ_segmentation.conf"
# shellcheck source=common.sh
source "$HERE/common.sh"

SOURCE="${1:-default}"
DICOM_DIR="${2:-$DATA_DIR/example_ct_dicom}"
REFERENCE="${3:-$DATA_DIR/example_seg_dicom.nii.gz}"
OUT="${4:-organ_seg_out}"
shift $(( $# < 4 ? $# : 4 ))
DICOM_DIR="$(abs_path "$DICOM_DIR")"
[[ "$REFERENCE" == "none" ]] || REFERENCE="$(abs_path "$REFERENCE")"
[[ "$SOURCE" == "default" ]] || SOURCE="$(abs_path "$SOURCE")"

start_timings "$OUT"

# 1. dataset index (label subset by config: label_remap)
INDEX="$OUT/index.json"
INDEX_ARGS=("label_remap=$LABEL_REMAP" "labels_file=$LABELS_FILE" "labels_file_key=$LABELS_FILE_KEY")
step index
if [[ "$SOURCE" == *.json ]]; then
  INDEX="$SOURCE"
elif [[ "$SOURCE" == "default" ]]; then
  MANIFEST="$OUT/train_manifest.csv"
  {
    echo "image,label,patient_id,fold"
    echo "$DATA_DIR/example_ct.nii.gz,$DATA_DIR/example_seg_fast_force_split.nii.gz,training_ct,1"
    echo "$DATA_DIR/example_ct_sm.nii.gz,$DATA_DIR/example_seg.nii.gz,validation_ct,0"
  } > "$MANIFEST"
  "$MEDEFF" index "$MANIFEST" "$INDEX" "${INDEX_ARGS[@]}" csv.allow_outside_root=true csv.fold_col=fold folds.k=2
else
  "$MEDEFF" index "$SOURCE" "$INDEX" "${INDEX_ARGS[@]}"
fi
done_step

# 2. training (skipped when CKPT is given)
if [[ -z "${CKPT:-}" ]]; then
  step train
  "$MEDEFF" train experiment=organ_seg_3d "data.index=$INDEX" data.fold=0 "data.num_classes=$NUM_CLASSES" \
    "run_dir=$OUT/train" trainer.accelerator=cpu "${TRAIN_OVERRIDES[@]}" "${ENV_OVERRIDES[@]}" "$@"
  CKPT="$OUT/train/checkpoints/last.ckpt"
  done_step
fi

# 3. segment the DICOM series: the mask is written on the series' own grid
step predict
"$MEDEFF" predict "ckpt=$CKPT" "input=$DICOM_DIR" "output_dir=$OUT/predict" "${PREDICT_OVERRIDES[@]}"
done_step
MASK="$(ls "$OUT"/predict/*_seg.nii.gz | head -n 1)"

# 4. evaluate against the reference (same label subset), 5. render the report
if [[ "$REFERENCE" != "none" ]]; then
  step evaluate
  printf 'case_id,prediction,reference\n%s,%s,%s\n' "$(basename "$MASK" _seg.nii.gz)" "$MASK" "$REFERENCE" \
    > "$OUT/evaluation_cases.csv"
  "$MEDEFF" evaluate kind=segmentation "segmentation.index=$OUT/evaluation_cases.csv" \
    "segmentation.labels=$LABEL_NAMES" "segmentation.reference_remap=$LABEL_REMAP" \
    segmentation.reorient_reference=true render=false "output_dir=$OUT/report" \
    "title=Organ segmentation: Dice per organ on the DICOM series" "${EVALUATE_OVERRIDES[@]}"
  done_step
  step report
  "$MEDEFF" report "results=$OUT/report/results.json" "output_dir=$OUT/report"
  done_step
fi
echo "total $SECONDS s" >> "$TIMES"
echo "organ segmentation finished in ${SECONDS} s: mask $MASK; report $OUT/report/report.html"
