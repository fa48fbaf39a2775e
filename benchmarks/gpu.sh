#!/usr/bin/env bash
# The GPU measurement in one script (issue 5): stock nnU-Net chain vs this product, full ResEncL members,
# alternated, on a machine whose Python has torch but not the other dependencies: they come from .whl/
# (benchmarks/fetch_wheels.sh). Usage, from the repo root:  bash benchmarks/gpu.sh OUT_DIR [PRESET [BENCHMARK OPTIONS]]
# PRESET is gpu (default) or cpu/smoke to exercise the script without a GPU. Writes OUT_DIR/benchmark-<preset>.json
# and OUT_DIR/benchmark-<preset>.log (the JSON after each case), after OUT_DIR/forward-formats-<preset>.json
# (benchmarks/forward_formats.py, at most 100 s). Sized to finish in <= 8 minutes on an H100/H200:
# --max-minutes 5 starts no new repeat or case after 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu.sh OUT_DIR [gpu|cpu|smoke [BENCHMARK OPTIONS]]}
preset=${2:-gpu}
mkdir -p "$out"
if ! python3 -c "import nnunetv2, SimpleITK" 2>/dev/null; then
    site=/tmp/panther-site
    # by name from .whl/, so pip takes the wheel that fits this Python where there are several
    python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" $(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | sort -u)
    tar -C "$site" -xJf .whl/simpleitk.tar.xz
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# the GPU tests (tests/test_cuda_graph.py, tests/test_predict.py: skipped where there is no GPU), then the memory-format
# measurement, bounded, so that the benchmark always runs
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py tests/test_predict.py 2>&1 | tail -3
timeout 100 python3 benchmarks/forward_formats.py "$out/forward-formats-$preset.json" "$preset" \
    || echo "forward_formats.py did not finish (exit $?)"
python3 -m panther_ensemble.cli benchmark --preset "$preset" --max-minutes 5 --work /tmp/panther-benchmark \
    --out "$out/benchmark-$preset.json" "${@:3}" 2>&1 | tee "$out/benchmark-$preset.log"
