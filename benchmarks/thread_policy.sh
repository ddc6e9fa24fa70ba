#!/usr/bin/env bash
# OpenMP waiting under load: time-only `medeff bench` cases with each waiting setting, without and with one competing
# busy process (a Python busy loop). Results: OUT_DIR/threads_<setting>_busy<0|1>.json (docs/benchmarks.md,
# "Thread policy").
# Settings (libgomp, torch's OpenMP runtime; default "passive spin300k"): passive (spin 0: sleep at once), spin10k (spin
# ~10,000 iterations, then sleep), spin300k (OpenMP's default when nothing is set), active (spin ~forever), auto
# (medeff's default: spin300k or passive, chosen from the load before every case; recorded in the JSON).
# Usage: benchmarks/thread_policy.sh [OUT_DIR] [extra medeff bench overrides, e.g. pairs=5 'cases=[cls3d_b0]']
set -u
OUT="${1:-benchmarks/results}"
shift || true
HERE="$(cd "$(dirname "$0")" && pwd)"
MEDEFF="${MEDEFF:-$HERE/../.venv/bin/medeff}"
PY="${PYTHON:-$HERE/../.venv/bin/python}"
SETTINGS="${SETTINGS:-passive spin300k}"
settings_env() {
  case "$1" in
    passive) echo "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=0" ;;
    spin10k) echo "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000" ;;
    spin300k) echo "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=300000" ;;
    active) echo "OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=30000000000" ;;
    auto) echo "MEDEFF_WAIT_POLICY=auto" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}
for busy in 0 1; do
  BUSY_PID=""
  if [ "$busy" = 1 ]; then
    "$PY" -c "while True: pass" &
    BUSY_PID=$!
  fi
  for setting in $SETTINGS; do
    echo "thread_policy: $setting ($(settings_env "$setting")), busy processes: $busy, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    env $(settings_env "$setting") "$MEDEFF" --quiet bench 'cases=[cls3d_b0,cls2d_b0]' memory=false \
      "output=$OUT/threads_${setting}_busy${busy}.json" "$@" | grep -E "^│ .* time " 
  done
  if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID"; wait "$BUSY_PID" 2>/dev/null; fi
done
