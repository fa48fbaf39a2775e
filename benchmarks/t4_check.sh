#!/usr/bin/env bash
# The T4 check on a lent GPU, in one script (under 8 minutes on an H100/H200): benchmarks/t4_check.py's six ResEncL
# members on a 512 x 512 x 200 case and a PANTHER-sized one, CUDA graph capture on and off, reserved device memory,
# capture and warm-up times, per-tile time, verify time, the device estimate and the T4's placement, parity with the
# per-member reference. Usage, from the repo root:  bash benchmarks/t4_check.sh OUT_DIR [gpu|smoke]
# (smoke exercises it on a CPU). Writes OUT_DIR/t4_check.json and OUT_DIR/t4_check.log.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/t4_check.sh OUT_DIR [gpu|smoke]}
preset=${2:-gpu}
mkdir -p "$out"
# shellcheck source=benchmarks/device_env.sh
. benchmarks/device_env.sh
python3 benchmarks/t4_check.py --out "$out" --preset "$preset" --max-minutes 6 2>&1 | tee "$out/t4_check.log"
