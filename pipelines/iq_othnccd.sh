#!/usr/bin/env bash
# IQ-OTH/NCCD (normal / benign / malignant JPEG chest CT slices): the published image-level protocol beside a
# patient-safe one, with the medeff CLI only:
#   medeff index (near-duplicate groups) -> medeff split x2 (published: random by image; patient_safe: by group)
#   -> per protocol: medeff train + medeff predict per model, medeff knn (baseline) -> medeff protocols (report)
#
# Usage (from the repository root):
#   pipelines/iq_othnccd.sh DATA_DIR OUT_DIR [train overrides ...]
#
#   DATA_DIR          the folder holding the class folders ("Normal cases", "Bengin cases", "Malignant cases");
#                     default ${MEDEFF_SHARED_DATA:-../shared/data}/iq_othnccd/The IQ-OTHNCCD lung cancer dataset
#   OUT_DIR           output folder (default: iq_othnccd_out)
#   train overrides   Hydra overrides appended to `medeff train` (also read from $MEDEFF_PIPELINE_OVERRIDES)
#
# Environment: MEDEFF (the medeff command), MEDEFF_PREDICT_OVERRIDES, IQ_OTHNCCD_CONF (another settings file, e.g.
# pipelines/iq_othnccd_paper.conf: the paper's B0-B4 table) and every variable of pipelines/iq_othnccd.conf.
# Outputs: OUT_DIR/splits.csv, predictions.csv, results.json, report.html, timings.txt; work/ holds the index, the
# split folders, the runs and the per-model predictions.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
# settings: pipelines/iq_othnccd.conf, or the file named by IQ_OTHNCCD_CONF (e.g. pipelines/iq_othnccd_paper.conf)
# shellcheck source=iq_othnccd.conf
source "${IQ_OTHNCCD_CONF:-$HERE/iq_othnccd.conf}"
# shellcheck source=common.sh
source "$HERE/common.sh"

DATA="${1:-${MEDEFF_SHARED_DATA:-$ROOT/../shared/data}/iq_othnccd/The IQ-OTHNCCD lung cancer dataset}"
OUT="${2:-iq_othnccd_out}"
shift $(( $# < 2 ? $# : 2 ))
DATA="$(abs_path "$DATA")"
start_timings "$OUT"
WORK="$OUT/work"
mkdir -p "$WORK"
read -r -a NEAR <<< "$NEAR_DUPLICATE"
read -r -a FRAC <<< "$FRACTIONS"

# 1. index: one case per image, near-duplicate groups (identical files + similar slices, joined transitively)
step index
"$MEDEFF" index "$DATA" "$WORK/index.json" groups.near_duplicates=true "${NEAR[@]}" "class_names=$CLASSES" \
  "folders.class_map=$CLASS_MAP" "pseudonym.salt=$GROUP_SALT" overwrite=true
done_step

SPLITS=() INPUTS=()
for pair in published:random patient_safe:grouped; do
  NAME="${pair%%:*}" PROTOCOL="${pair##*:}"
  SPLIT="$WORK/$NAME"
  # 2. split (writes train.json, test.json, splits.csv, split_leakage.json)
  step "split_$NAME"
  "$MEDEFF" split "$WORK/index.json" "$SPLIT" "protocol=$PROTOCOL" "seed=$SPLIT_SEED" "${FRAC[@]}" overwrite=true
  done_step
  SPLITS+=("$NAME:$SPLIT")
  # 3. baseline without learning: nearest neighbour of 32x32 thumbnails
  step "knn_$NAME"
  "$MEDEFF" knn "$SPLIT/train.json" "$SPLIT/test.json" "$WORK/knn_$NAME" overwrite=true
  done_step
  INPUTS+=("$NAME:thumbnail_knn:$WORK/knn_$NAME/predictions.csv")
  # 4. the EfficientNets: same recipe and budget in both protocols
  for MODEL in $MODELS; do
    read -r -a MODEL_OVERRIDES <<< "$(model_overrides "$MODEL")"
    step "train_${NAME}_$MODEL"
    "$MEDEFF" train experiment=iq_othnccd "${MODEL_OVERRIDES[@]}" "data.index=$SPLIT/train.json" data.fold=0 \
      "run_dir=$WORK/run_${NAME}_$MODEL" trainer.accelerator=cpu "${TRAIN_OVERRIDES[@]}" "${ENV_OVERRIDES[@]}" "$@"
    done_step
    step "predict_${NAME}_$MODEL"
    "$MEDEFF" predict "ckpt=$WORK/run_${NAME}_$MODEL/checkpoints/last.ckpt" "input=$SPLIT/test.json" \
      "output_dir=$WORK/pred_${NAME}_$MODEL" device=cpu "${PREDICT_OVERRIDES[@]}"
    done_step
    INPUTS+=("$NAME:$MODEL:$WORK/pred_${NAME}_$MODEL/predictions.csv")
  done
done

# 5. both protocols and every model side by side: metrics with cluster-bootstrap CIs, paired comparison with k-NN
step report
list() { local IFS=,; printf "['%s']" "$(printf "%s" "$*" | sed "s/,/','/g")"; }
"$MEDEFF" protocols "$OUT" "splits=$(list "${SPLITS[@]}")" "inputs=$(list "${INPUTS[@]}")" "index=$WORK/index.json" \
  "image_root='$DATA'" "published=$PUBLISHED" "bootstrap.n_resamples=$N_RESAMPLES" \
  "title='IQ-OTH/NCCD: published image-level split vs patient-safe split'" overwrite=true
done_step
echo "Outputs: $OUT/report.html, $OUT/results.json, $OUT/predictions.csv, $OUT/splits.csv"
