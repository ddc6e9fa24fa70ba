#!/usr/bin/env bash
# One GPU check for medeff, under 8 minutes on one GPU (docs/benchmarks.md, "GPU check"):
#   1. the gpu-marked tests (pytest -m gpu), at most 3 minutes;
#   2. benchmarks/gpu_check.py: AMP (bf16, fp16) train steps of 2D B0, 3D B0 and the 3D U-Net against timm and
#      MONAI, channels-last, torch.compile, peak GPU memory, at most 4.5 minutes (it stops starting new sides
#      after --budget-s). Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md.
# Without CUDA it says so, skips the tests and runs the Python part on CPU in tiny mode (a syntax/fallback check).
# Usage: benchmarks/gpu_check.sh OUT_DIR [--tiny] [other gpu_check.py options]
set -u
OUT="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--tiny] [gpu_check.py options]}"
shift
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$HERE/../.venv/bin/python}"
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # --continue-on-collection-errors: a test module that does not import here (a dependency missing from a bare GPU
  # image) is reported in the log and the exit status, but does not stop the gpu-marked tests from running
  (cd "$HERE/.." && timeout 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors tests) \
    > "$OUT/gpu_tests.log" 2>&1
  TESTS=$?
  echo "gpu_check: gpu-marked tests exit status $TESTS (log: $OUT/gpu_tests.log)"
else
  TESTS="skipped: no CUDA device"
  echo "gpu_check: no CUDA device: skipping the gpu-marked tests; running the CPU fallback check only"
fi
timeout 270 "$PY" "$HERE/gpu_check.py" --output-dir "$OUT" --budget-s 210 --pytest-status "$TESTS" "$@"
STATUS=$?
echo "gpu_check: wrote $OUT/gpu_check.json and $OUT/gpu_check.md (exit status $STATUS)"
exit $STATUS
