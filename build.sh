#!/usr/bin/env bash
# Build and tag the Grand Challenge image (linux/amd64).
#
#   ./build.sh [--no-weights] [--tag TAG]
#
#   --tag TAG       image tag (default: panther-ensemble:latest)
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
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --no-weights) with_weights=0; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

args=(--platform=linux/amd64 --network "${DOCKER_BUILD_NETWORK:-host}" --build-arg "WITH_WEIGHTS=$with_weights"
      --tag "$tag")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
echo "== building $tag (base: ${BASE_IMAGE:-Dockerfile default}, weights baked in: $([[ $with_weights == 1 ]] && echo yes || echo no))"
start=$SECONDS
BUILDKIT_PROGRESS="${BUILDKIT_PROGRESS:-plain}" docker build "${args[@]}" .
size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1 / 1e9}')"
echo "built $tag in $((SECONDS - start)) s: $size"
