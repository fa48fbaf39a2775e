#!/usr/bin/env bash
# The GPU measurement in one script (issue 5): stock nnU-Net chain vs this product, full ResEncL members,
# alternated, on a machine whose Python has torch but not the other dependencies: they come from .whl/
# (benchmarks/fetch_wheels.sh). Usage, from the repo root:  bash benchmarks/gpu.sh OUT_DIR [PRESET [BENCHMARK OPTIONS]]
# PRESET is gpu (default) or cpu/smoke to exercise the script without a GPU. Writes OUT_DIR/benchmark-<preset>.json
# and OUT_DIR/benchmark-<preset>.log (the JSON after each case), after OUT_DIR/forward-formats-<preset>.json
# (benchmarks/forward_formats.py, at most 100 s). Sized to finish in <= 8 minutes on an H100/H200:
# --max-minutes 5 starts no new repeat or case after 5 minutes.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [gpu|cpu|smoke [BENCHMARK OPTIONS]]}
preset=${2:-gpu}
mkdir -p "$out"
# shellcheck source=benchmarks/device_env.sh
. benchmarks/device_env.sh
# the GPU tests (tests/test_cuda_graph.py, tests/test_predict.py: skipped where there is no GPU), then the memory-format
# measurement, bounded, so that the benchmark always runs
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_predict.py 2>&1 | tail -3
timeout 100 python3 benchmarks/forward_formats.py "$out/forward-formats-$preset.json" "$preset" \
    || echo "forward_formats.py did not finish (exit $?)"
python3 -m panther_ensemble.cli benchmark --preset "$preset" --max-minutes 5 --work /tmp/panther-benchmark \
    --out "$out/benchmark-$preset.json" "${@:3}" 2>&1 | tee "$out/benchmark-$preset.log"
