#!/usr/bin/env bash
# Build and tag the Grand Challenge image (linux/amd64), once per GC API method: the same layers, a label apart.
#
#   ./build.sh [--no-weights] [--tag TAG] [--api exec|invoke|both]
#
#   --tag TAG       the exec image's tag (default: panther-ensemble:latest); the invoke image is TAG-invoke
#                   (panther-ensemble:latest-invoke)
#   --api ...       which to build (default: both). invoke: labelled org.grand-challenge.api-method=invoke, GC
#                   starts it once and sends each case to its server (/health, /invoke): loading is outside the
#                   cases' time limit (the one to upload, docs/container.md); exec: GC runs it once per case
#   --no-weights    leave weights/ out of the image: the weights then come from GC's model tarball
#                   (export.sh writes it; GC extracts it to /opt/ml/model)
#   BASE_IMAGE=...  the PyTorch runtime base (default: the Dockerfile's, pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime:
#                   Python 3.11, torch 2.7.1 for CUDA 12.6, cuDNN 9; offline, test/standin_base.sh builds a stand-in)
#   DOCKER_BUILD_NETWORK=...  network for the build's pip (default: host)
# The build log names the image's Python, torch, CUDA, cuDNN and ONNX Runtime, and the build fails when ONNX
# Runtime's CUDA provider cannot load its CUDA and cuDNN libraries (see the Dockerfile). BuildKit shows that
# output too: its progress is plain unless BUILDKIT_PROGRESS says otherwise.
set -euo pipefail
cd "$(dirname "$0")"

tag="panther-ensemble:latest"
with_weights=1
api=both
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --no-weights) with_weights=0; shift ;;
        --api) api="${2:?--api needs exec, invoke or both}"; shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

case "$api" in
    both) apis=(exec invoke) ;;
    exec|invoke) apis=("$api") ;;
    *) echo "build.sh: --api takes exec, invoke or both, got '$api'" >&2; exit 2 ;;
esac
invoke_tag() { if [[ "${1##*/}" == *:* ]]; then echo "$1-invoke"; else echo "$1:latest-invoke"; fi; }

args=(--platform=linux/amd64 --network "${DOCKER_BUILD_NETWORK:-host}" --build-arg "WITH_WEIGHTS=$with_weights")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
for method in "${apis[@]}"; do
    this_tag="$tag"
    [[ $method == invoke ]] && this_tag="$(invoke_tag "$tag")"
    echo "== building $this_tag (API method $method; base: ${BASE_IMAGE:-Dockerfile default}, weights baked in:" \
        "$([[ $with_weights == 1 ]] && echo yes || echo no))"
    start=$SECONDS
    BUILDKIT_PROGRESS="${BUILDKIT_PROGRESS:-plain}" docker build "${args[@]}" --build-arg "API_METHOD=$method" \
        --tag "$this_tag" .
    size="$(docker image inspect -f '{{.Size}}' "$this_tag" | awk '{printf "%.2f GB", $1 / 1e9}')"
    echo "built $this_tag in $((SECONDS - start)) s: $size (label org.grand-challenge.api-method=$method)"
done
