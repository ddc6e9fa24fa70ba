#!/usr/bin/env bash
# LIDC nodule triage: train EfficientNet fold models on TRAIN_DIR (exam-level cross-validation), predict TEST_DIR
# with their ensemble combined with a radiomics + diameter feature model (config `combine`), and report the
# cross-validated AUC of the shipped score, of each of its parts and of two baselines (diameter, radiomics) on the
# same folds and, when TEST_DIR has labels, the test-set metrics.
#
#   pipelines/lidc_nodule_slices.sh TRAIN_DIR TEST_DIR OUT_DIR
#
# TRAIN_DIR, TEST_DIR: folders in the format of lidc_nodule_slices_64 (nodule_slices_64x64.npz, index.csv);
# TEST_DIR may lack labels. Writes OUT_DIR/predictions.csv (nodule_key, probability_malignant, predicted_label),
# OUT_DIR/report.html and the intermediate files under OUT_DIR/work/.
# Config: conf/pipeline/${MEDEFF_LIDC_PIPELINE:-lidc_nodule_triage}.yaml, overrides in MEDEFF_LIDC_OVERRIDES
# ("key=value ..."); the medeff command is $MEDEFF (default: medeff on the PATH, else .venv/bin/medeff). See docs/workflows/lidc_nodule_triage.md.
set -euo pipefail

if [ "$#" -ne 3 ]; then
    echo "usage: $0 TRAIN_DIR TEST_DIR OUT_DIR" >&2
    exit 2
fi
TRAIN_DIR=$1
TEST_DIR=$2
OUT_DIR=$3
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MEDEFF="${MEDEFF:-$(command -v medeff || echo "$ROOT/.venv/bin/medeff")}"
PIPELINE=${MEDEFF_LIDC_PIPELINE:-lidc_nodule_triage}
read -r -a OVERRIDES <<< "${MEDEFF_LIDC_OVERRIDES:-}"
ARCHIVE=nodule_slices_64x64.npz

for d in "$TRAIN_DIR" "$TEST_DIR"; do
    if [ ! -f "$d/$ARCHIVE" ]; then
        echo "error: '$d' holds no $ARCHIVE (expected the format of lidc_nodule_slices_64)." >&2
        exit 2
    fi
done

# 0. configuration (conf/pipeline/<name>.yaml) as shell variables
CONFIG=$($MEDEFF lidc config --pipeline "$PIPELINE" "${OVERRIDES[@]}")
eval "$CONFIG"
read -r -a TRAIN_EXTRA <<< "$TRAIN_OVERRIDES"
WORK=$OUT_DIR/work
mkdir -p "$WORK"
step() { echo "[lidc $(date -u +%H:%M:%S)] $*" >&2; }

# 1. dataset index of TRAIN_DIR with exam-level folds
step "index $TRAIN_DIR ($FOLDS folds)"
$MEDEFF index "$TRAIN_DIR" "$WORK/index.json" folds.k="$FOLDS" folds.seed="$FOLD_SEED" overwrite=true

# 2. one EfficientNet per fold (fold k validates, the others train)
step "train $EXPERIMENT on folds $FOLD_LIST"
$MEDEFF train -m experiment="$EXPERIMENT" data.index="$WORK/index.json" data.fold="$FOLD_LIST" \
    paths.output_dir="$WORK" run_name=lidc "${TRAIN_EXTRA[@]}"

# 3. out-of-fold predictions: each fold model scores the nodules of its validation fold
step "out-of-fold predictions"
$MEDEFF lidc folds "$WORK/index.json" "$TRAIN_DIR" "$WORK/folds"
for ((k = 0; k < FOLDS; k++)); do
    $MEDEFF predict ckpt="$WORK/train/lidc/fold$k/checkpoints/last.ckpt" input="$WORK/folds/fold$k/$ARCHIVE" \
        output_dir="$WORK/oof/fold$k" tta="$TTA" batch_size="$PREDICT_BATCH" device=cpu overwrite=true
done

# 4. test predictions: the ensemble of the fold models (mean probability)
step "test predictions (ensemble of $FOLDS fold models)"
$MEDEFF predict ckpt="$WORK/train/lidc" input="$TEST_DIR/$ARCHIVE" output_dir="$WORK/test" tta="$TTA" \
    batch_size="$PREDICT_BATCH" device=cpu overwrite=true

# 5. baselines on the same folds, the out-of-fold table and OUT_DIR/predictions.csv
step "baselines and predictions.csv"
$MEDEFF lidc assemble "$TRAIN_DIR" "$WORK/index.json" "$WORK/oof/fold*/predictions.csv" "$TEST_DIR" \
    "$WORK/test/predictions.csv" "$OUT_DIR" "$WORK" "${OVERRIDES[@]}" --pipeline "$PIPELINE"

# 6. evaluation of the test set (triage listing when it has no labels) + cross-validation section -> report.html
step "evaluate and report"
$MEDEFF evaluate kind=classification classification.predictions="$WORK/test_eval.csv" \
    classification.columns.case=nodule_key classification.columns.group=exam_id \
    classification.columns.label=label classification.columns.scores=probability_malignant \
    classification.columns.model_name="$MODEL_NAME" classification.unit=nodule \
    classification.threshold="$(cat "$WORK/threshold.txt")" \
    classification.target_sensitivities="$TARGET_SENS" bootstrap.n_resamples="$N_RESAMPLES" \
    bootstrap.confidence="$CONFIDENCE" bootstrap.seed="$BOOT_SEED" \
    output_dir="$WORK/eval" render=false overwrite=true
$MEDEFF lidc cv-section "$WORK/eval/results.json" "$WORK/cv_predictions.csv" "${OVERRIDES[@]}" \
    --pipeline "$PIPELINE"  # overrides before --pipeline: argparse reads positionals only in one run
$MEDEFF report results="$WORK/eval/results.json" output_dir="$OUT_DIR" 'formats=[html]' overwrite=true
step "done: $OUT_DIR/predictions.csv $OUT_DIR/report.html"
