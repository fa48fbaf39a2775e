#!/usr/bin/env bash
# Fetch, here, what the GPU machine's Python lacks (it has torch, numpy, scipy, scikit-image, pandas,
# einops, httpx, rich, ...; not nnU-Net or SimpleITK) into .whl/ (git-ignored), for benchmarks/gpu.sh.
# The device tool carries at most 64 MiB with the working tree: SimpleITK's 53 MB wheel travels as its
# unpacked files in a 29 MB tar.xz instead.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
# compiled packages: the manylinux wheels for the device's CPython (3.12.3 in 2026-11, the device tool's KINDS.md;
# PYTHON_VERSIONS="3.12 3.13" fetches several and gpu.sh lets pip pick the one that fits, where the carry allows);
# blosc2's pydantic is left out: nothing the benchmark runs imports it, and the carry is tight
for version in ${PYTHON_VERSIONS:-3.12}; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version $version --implementation cp \
        "${platforms[@]}" -d .whl blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2 simpleitk==2.5.7 \
        connected-components-3d==4.1.1
done
# pure-Python packages (some are published as source only): built here into py3-none-any wheels
python3 -m pip wheel -q --no-deps -w .whl nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6 \
    batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 nibabel==5.4.2 future==1.0.0 yacs==0.1.8 graphviz==0.21 \
    unittest2==1.1.0 linecache2==1.0.0 traceback2==1.4.0 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
sitk=$(ls .whl/simpleitk-*.whl)
mkdir .whl/simpleitk && (cd .whl/simpleitk && python3 -m zipfile -e "../$(basename "$sitk")" .)
tar -C .whl/simpleitk -cJf .whl/simpleitk.tar.xz . && rm -rf .whl/simpleitk "$sitk"
du -sh .whl
