#!/usr/bin/env bash
# Build and tag the Grand Challenge image (linux/amd64), once per GC API method: the same layers, a label apart.
#
#   ./build.sh [--no-weights] [--tag TAG] [--api exec|invoke|both] [--ensemble FILE ... [--weights DIR]]
#
#   --tag TAG       the exec image's tag (default: panther-ensemble:latest); the invoke image is TAG-invoke
#                   (panther-ensemble:latest-invoke)
#   --api ...       which to build (default: both). invoke: labelled org.grand-challenge.api-method=invoke, GC
#                   starts it once and sends each task to its server (/health, /invoke): a job of several tasks
#                   loads once (the one to upload, docs/container.md); exec: GC runs it once per task. GC's time
#                   limit counts from the container's start in both (docs/contracts.md, the deadline)
#   --no-weights    leave weights/ out of the image: the weights then come from GC's model tarball
#                   (export.sh writes it; GC extracts it to /opt/ml/model)
#   --ensemble FILE your spec (repeatable, one per input socket), baked in instead of the demo's ensemble/: the
#                   image's ensemble/ holds these specs, its weights/ only the folds they name (from --weights,
#                   default weights/), checkpoints stripped and a manifest, staged by the image's own code;
#                   relative paths are from where you run it, a missing file or folder is refused
#   BASE_IMAGE=...  the PyTorch runtime base (default: the Dockerfile's, pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime:
#                   Python 3.11, torch 2.7.1 for CUDA 12.6, cuDNN 9; offline, test/standin_base.sh builds a stand-in)
#   DOCKER_BUILD_NETWORK=...  network for the build's pip (default: host)
# The build log names the image's Python, torch, CUDA, cuDNN and ONNX Runtime, and the build fails when ONNX
# Runtime's CUDA provider cannot load its CUDA and cuDNN libraries (see the Dockerfile). BuildKit shows that
# output too: its progress is plain unless BUILDKIT_PROGRESS says otherwise.
set -euo pipefail

tag="panther-ensemble:latest"
with_weights=1
api=both
ensembles=()
weights=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ensemble) ensembles+=("${2:?--ensemble needs a spec file}"); shift 2 ;;
        --weights) weights="${2:?--weights needs a folder}"; shift 2 ;;
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

if [[ -n "$weights" && ${#ensembles[@]} -eq 0 ]]; then
    echo "build.sh: --weights goes with --ensemble (the specs to bake in)" >&2; exit 2
fi
if [[ ${#ensembles[@]} -gt 0 && $with_weights == 0 ]]; then
    echo "build.sh: --ensemble bakes weights in; --no-weights leaves them out: one or the other" >&2; exit 2
fi
# the paths given are the caller's (resolved before the cd below), and must be there: docker -v would create a
# missing one as an empty folder
for i in "${!ensembles[@]}"; do
    [[ -f "${ensembles[i]}" ]] || { echo "build.sh: --ensemble ${ensembles[i]} is not a file" >&2; exit 1; }
    ensembles[i]="$(realpath "${ensembles[i]}")"
done
if [[ -n "$weights" ]]; then
    [[ -d "$weights" ]] || { echo "build.sh: --weights $weights is not a folder" >&2; exit 1; }
    weights="$(realpath "$weights")"
fi
cd "$(dirname "$0")"

args=(--platform=linux/amd64 --network "${DOCKER_BUILD_NETWORK:-host}" --build-arg "WITH_WEIGHTS=$with_weights")
if [[ -n "${BASE_IMAGE:-}" ]]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi
context=.
baked="the demo's ensemble/ and weights/"
((with_weights)) || baked="no weights"
if [[ ${#ensembles[@]} -gt 0 ]]; then
    baked="${ensembles[*]}"
    # your specs and their folds instead of the demo's: the image's own code stages them (checked, stripped, a
    # manifest) in the app's layout; the same Dockerfile then builds from a context holding them
    weights="${weights:-$PWD/weights}"
    [[ -d "$weights" ]] || { echo "build.sh: --weights $weights is not a folder" >&2; exit 1; }
    stager="$tag-staging"
    echo "== staging ${ensembles[*]} with the folds they name from $weights"
    BUILDKIT_PROGRESS="${BUILDKIT_PROGRESS:-plain}" docker build "${args[@]}" --build-arg WITH_WEIGHTS=0 \
        --tag "$stager" . >/dev/null
    context="$(mktemp -d /tmp/panther-build.XXXXXX)"
    trap 'rm -rf "$context"; docker rmi -f "$stager" >/dev/null 2>&1 || true' EXIT
    cp -r Dockerfile .dockerignore inference.py requirements-container.txt src "$context/"
    mkdir -p "$context/docker" "$context/stage" && cp docker/image_check.py "$context/docker/"
    chmod a+rwx "$context/stage"
    mounts=(-v "$weights:/in/weights:ro" -v "$context/stage:/stage")
    names=()
    for spec in "${ensembles[@]}"; do
        name="$(basename "$spec")"
        [[ " ${names[*]} " != *" $name "* ]] || { echo "build.sh: two specs named $name" >&2; exit 2; }
        names+=("$name")
        mounts+=(-v "$spec:/in/specs/$name:ro")
    done
    docker run --rm --network none --user "$(id -u):$(id -g)" --entrypoint python --env PYTHONPATH=/opt/app/src \
        "${mounts[@]}" "$stager" -m panther_ensemble.app.model_tarball --weights /in/weights --out /stage \
        --layout app "${names[@]/#//in/specs/}"
    mv "$context/stage/ensemble" "$context/stage/weights" "$context/"
fi
for method in "${apis[@]}"; do
    this_tag="$tag"
    [[ $method == invoke ]] && this_tag="$(invoke_tag "$tag")"
    echo "== building $this_tag (API method $method; base: ${BASE_IMAGE:-Dockerfile default}; baked in: $baked)"
    start=$SECONDS
    BUILDKIT_PROGRESS="${BUILDKIT_PROGRESS:-plain}" docker build "${args[@]}" --build-arg "API_METHOD=$method" \
        --tag "$this_tag" "$context"
    size="$(docker image inspect -f '{{.Size}}' "$this_tag" | awk '{printf "%.2f GB", $1 / 1e9}')"
    echo "built $this_tag in $((SECONDS - start)) s: $size (label org.grand-challenge.api-method=$method)"
done
