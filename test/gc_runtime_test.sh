#!/usr/bin/env bash
# The image under Grand Challenge's own runtime (test/gc_runtime.py says how): wrapped as GC wraps it, driven by
# GC's sagemaker-shim in exec and in invoke mode, inputs and outputs through a local S3 (moto on 127.0.0.1).
#
#   test/gc_runtime_test.sh      (after test/container_test.sh, whose images it reuses; TEST_TAG as there)
#
# Needs a running Docker engine, root (test/gc_shim.sh builds GC's static shim with debootstrap) and the dev install
# (pip install -e '.[dev]': boto3 and moto's server). Builds the
# images (build.sh, exec and invoke, with weights and without) where they are missing, exports the model tarballs
# (export.sh --models-only), starts the S3 and runs the scenarios: both sample cases in exec and in invoke mode
# (inputs.json with socket and interface, and with socket alone), the model tarball as GC passes it, a corrupt input,
# an empty input, a bad case followed by a good one in one server, the server killed mid-task, GC's memory for a
# 16 GB T4 and limits too small for a 512 x 512 x 200 case (exec) and for the networks (invoke), and the first
# invoke task's mask within a tight budget counted from the container's start (the shim's health polls included).
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${TEST_TAG:-panther-ensemble:test}"
fail() { echo "gc_runtime_test: FAILED: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info); start dockerd first"
python -c "import boto3, moto" 2>/dev/null || fail "boto3 and moto are missing: pip install -e '.[dev]'"
missing=0
for tag in "$TAG" "$TAG-invoke" "$TAG-no-weights" "$TAG-no-weights-invoke"; do
    docker image inspect "$tag" >/dev/null 2>&1 || missing=1
done
if ((missing)); then
    source test/base_image.sh
    ./build.sh --tag "$TAG"
    ./build.sh --tag "$TAG-no-weights" --no-weights
fi

test/gc_shim.sh  # GC's static /sagemaker-shim (built once, then reused)

work="$(mktemp -d /tmp/panther-gc-runtime.XXXXXX)"
moto_pid=""
trap '[[ -n "$moto_pid" ]] && kill "$moto_pid" 2>/dev/null; rm -rf "$work"' EXIT
./export.sh --tag "$TAG" --out "$work/export" --models-only

port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_server -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 50); do
    python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" 2>/dev/null \
        && break
    sleep 0.2
done
echo "== local S3: moto on 127.0.0.1:$port"
python test/gc_runtime.py --tag "$TAG" --s3 "http://127.0.0.1:$port" --export "$work/export" "$@"
