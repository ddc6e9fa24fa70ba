#!/usr/bin/env bash
# OpenMP wait policy under load: the depthwise-heavy 3D classifier case of `medeff bench` (time only) with
# OMP_WAIT_POLICY=PASSIVE (medeff's default) and ACTIVE (OpenMP's), each without and with one competing busy
# process (a Python busy loop), interleaved. Results: OUT_DIR/threads_<policy>_busy<0|1>.json (docs/benchmarks.md,
# "Thread policy").
# Usage: benchmarks/thread_policy.sh [OUT_DIR] [extra medeff bench overrides, e.g. pairs=5]
set -u
OUT="${1:-benchmarks/results}"
shift || true
HERE="$(cd "$(dirname "$0")" && pwd)"
MEDEFF="${MEDEFF:-$HERE/../.venv/bin/medeff}"
PY="${PYTHON:-$HERE/../.venv/bin/python}"
for busy in 0 1; do
  BUSY_PID=""
  if [ "$busy" = 1 ]; then
    "$PY" -c "while True: pass" &
    BUSY_PID=$!
  fi
  for policy in PASSIVE ACTIVE; do
    echo "thread_policy: OMP_WAIT_POLICY=$policy, busy processes: $busy, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    OMP_WAIT_POLICY=$policy "$MEDEFF" --quiet bench 'cases=[cls3d_b0]' memory=false \
      "output=$OUT/threads_${policy}_busy${busy}.json" "$@" | tail -n 8
  done
  if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID"; wait "$BUSY_PID" 2>/dev/null; fi
done
