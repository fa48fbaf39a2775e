#!/usr/bin/env bash
# Build and tag the Grand Challenge image (linux/amd64).
#
#   ./build.sh [--no-weights] [--tag TAG]
#
#   --tag TAG       image tag (default: panther-ensemble:latest)
#   --no-weights    leave weights/ out of the image: the weights then come from GC's model tarball
#                   (export.sh writes it; GC extracts it to /opt/ml/model)
#   BASE_IMAGE=...  the PyTorch runtime base (default: the Dockerfile's, a CUDA 12 image with Python 3.11)
#   DOCKER_BUILD_NETWORK=...  network for the build's pip (default: host)
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
docker build "${args[@]}" .
size="$(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.2f GB", $1 / 1e9}')"
echo "built $tag in $((SECONDS - start)) s: $size"
