# Shared by the pipeline scripts (sourced, not run): the medeff command, threads, extra overrides from the
# environment, and step timing written to $OUT/timings.txt.
#   MEDEFF                      the medeff command (default: medeff on the PATH, else .venv/bin/medeff)
#   OMP_NUM_THREADS             torch/OpenMP threads (default 2)
#   MEDEFF_PIPELINE_OVERRIDES   Hydra overrides appended to `medeff train` ("key=value ...")
#   MEDEFF_PREDICT_OVERRIDES    ... to `medeff predict`
#   MEDEFF_EVALUATE_OVERRIDES   ... to `medeff evaluate`
MEDEFF="${MEDEFF:-$(command -v medeff || echo "$ROOT/.venv/bin/medeff")}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
read -r -a ENV_OVERRIDES <<< "${MEDEFF_PIPELINE_OVERRIDES:-}"
read -r -a PREDICT_OVERRIDES <<< "${MEDEFF_PREDICT_OVERRIDES:-}"
read -r -a EVALUATE_OVERRIDES <<< "${MEDEFF_EVALUATE_OVERRIDES:-}"

# start_timings OUT_DIR: create OUT_DIR, make $OUT absolute and start an empty timings file
start_timings() {
  mkdir -p "$1"
  OUT="$(cd "$1" && pwd)"
  TIMES="$OUT/timings.txt"
  : > "$TIMES"
}
# abs_path PATH: PATH made absolute against the working directory of the caller (files written into $OUT, such as
# manifests, must not hold paths relative to somewhere else)
abs_path() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$PWD/$1" ;;
  esac
}
step() { echo "== $(date -u +%H:%M:%S) $*"; STEP_NAME="$1"; STEP_START=$SECONDS; }
done_step() { echo "$STEP_NAME $((SECONDS - STEP_START)) s" >> "$TIMES"; }
