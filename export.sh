#!/usr/bin/env bash
# Write the Grand Challenge upload artifacts (default folder: export/, which git ignores):
#
#   <tag>_<date>.tar.gz   the image (docker save | gzip)  -> the algorithm's Containers page: by default the invoke
#                         image (TAG-invoke: GC starts it once and sends each task to its server; a job of several
#                         tasks loads once), with --api exec the exec one (TAG)
#   model-<name>.tar.gz   for each spec (--ensemble FILE, repeatable; default: every ensemble/*.toml): the spec
#                         and only the member folds it uses from the weights root (--weights DIR; default:
#                         weights/), checkpoints stripped to what inference needs, and a weights.sha256
#                         manifest -> the algorithm's Models page; GC extracts it to /opt/ml/model, and the
#                         image runs from that alone. With --onnx the tarball holds the members as ONNX models
#                         instead (no checkpoints, the spec says backend = "onnxruntime", onnx_manifest.json
#                         beside weights.sha256). Each is the image's `panther-ensemble export-model`.
#
#   ./export.sh [--tag TAG] [--api invoke|exec] [--out DIR] [--models-only | --image-only] [--onnx]
#               [--ensemble FILE ...] [--weights DIR]
#
# Relative paths are from where you run it; a missing --ensemble file or --weights folder is refused.
# Needs the built image (./build.sh): it also strips the checkpoints, with the image's own torch.
# Prints each artifact's size and sha256, and the image's unpacked size. GC refuses an image upload above 10 GiB
# (its COMPONENTS_MAXIMUM_IMAGE_SIZE): an image tarball above it is refused in one line and not kept
# (PANTHER_IMAGE_LIMIT_BYTES sets another limit, for a Grand Challenge instance of your own).
set -euo pipefail

tag="panther-ensemble:latest"
api=invoke
out=""
do_image=1
do_models=1
onnx=0
specs=()
weights=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --ensemble) specs+=("${2:?--ensemble needs a spec file}"); shift 2 ;;
        --weights) weights="${2:?--weights needs a folder}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --api) api="${2:?--api needs invoke or exec}"; shift 2 ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        --models-only) do_image=0; shift ;;
        --image-only) do_models=0; shift ;;
        --onnx) onnx=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "export.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$api" in
    invoke) if [[ "${tag##*/}" == *:* ]]; then tag="$tag-invoke"; else tag="$tag:latest-invoke"; fi ;;
    exec) ;;
    *) echo "export.sh: --api takes invoke or exec, got '$api'" >&2; exit 2 ;;
esac
# the paths given are the caller's (resolved before the cd below), and must be there: docker -v would create a
# missing one as an empty folder
for i in "${!specs[@]}"; do
    [[ -f "${specs[i]}" ]] || { echo "export.sh: --ensemble ${specs[i]} is not a file" >&2; exit 1; }
    specs[i]="$(realpath "${specs[i]}")"
done
if [[ -n "$weights" ]]; then
    [[ -d "$weights" ]] || { echo "export.sh: --weights $weights is not a folder" >&2; exit 1; }
    weights="$(realpath "$weights")"
fi
[[ -z "$out" || "$out" == /* ]] || out="$PWD/$out"
cd "$(dirname "$0")"
weights="${weights:-$PWD/weights}"
out="${out:-export}"
docker image inspect "$tag" >/dev/null 2>&1 || { echo "export.sh: no image '$tag'; run ./build.sh first" >&2; exit 1; }
label="$(docker image inspect -f '{{index .Config.Labels "org.grand-challenge.api-method"}}' "$tag")"
[[ "$label" == "$api" ]] || { echo "export.sh: $tag is labelled api-method '$label', not '$api'; rebuild it" >&2; exit 1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"

report() {  # name, role
    printf '%-48s %9s  sha256 %s  (%s)\n' "$(basename "$1")" "$(du -h "$1" | cut -f1)" \
        "$(sha256sum "$1" | cut -d' ' -f1)" "$2"
}

work="$(mktemp -d /tmp/panther-export.XXXXXX)"
partial=""
trap 'rm -rf "$work" ${partial:+"$partial"}' EXIT
artifacts=()
if [[ $do_models == 1 ]]; then
    if [[ ${#specs[@]} -eq 0 ]]; then
        specs=("$PWD"/ensemble/*.toml)
        [[ -e "${specs[0]}" ]] || { echo "export.sh: no ensemble/*.toml (or pass --ensemble FILE)" >&2; exit 1; }
    fi
    [[ -d "$weights" ]] || { echo "export.sh: --weights $weights is not a folder" >&2; exit 1; }
    chmod a+rwx "$work"
    for spec in "${specs[@]}"; do
        name="$(basename "$spec" .toml)"
        echo "== model-$name.tar.gz from $spec$( ((onnx)) && echo ", members as ONNX models")"
        docker run --rm --network none --user "$(id -u):$(id -g)" --entrypoint python --env PYTHONPATH=/opt/app/src \
            -v "$spec:/in/$name.toml:ro" -v "$weights:/in/weights:ro" -v "$work:/out" "$tag" \
            -m panther_ensemble.cli export-model --ensemble "/in/$name.toml" --weights /in/weights \
            --out "/out/model-$name.tar.gz" $( ((onnx)) && echo --onnx)
        mv "$work/model-$name.tar.gz" "$out/"
        artifacts+=("$out/model-$name.tar.gz|Models page; GC extracts it to /opt/ml/model")
    done
fi
if [[ $do_image == 1 ]]; then
    image_file="${tag//[:\/]/-}_$(date +%Y-%m-%d_%H-%M-%S).tar.gz"
    limit="${PANTHER_IMAGE_LIMIT_BYTES:-$((10 * 1024 ** 3))}"
    gib() { awk -v b="$1" 'BEGIN { printf "%.2f GiB", b / 1024 ^ 3 }'; }
    echo "== $image_file (docker save | gzip)"
    start=$SECONDS
    compress=(gzip -c)
    if command -v pigz >/dev/null; then compress=(pigz -c); fi
    partial="$out/.$image_file.partial"
    docker save "$tag" | "${compress[@]}" > "$partial"
    size="$(stat -c %s "$partial")"
    if (( size > limit )); then
        echo "export.sh: $image_file would be $(gib "$size"), above GC's image upload limit of $(gib "$limit"); not written (a smaller base, fewer packages, or the weights as a model tarball instead of in the image)" >&2
        exit 1
    fi
    mv "$partial" "$out/$image_file"
    echo "   written in $((SECONDS - start)) s: $(gib "$size") to upload (GC's limit $(gib "$limit")), $(gib "$(docker image inspect -f '{{.Size}}' "$tag")") unpacked"
    artifacts+=("$out/$image_file|Containers page (image $tag, API method $api)")
fi

echo "== artifacts in $out"
for entry in "${artifacts[@]}"; do
    report "${entry%%|*}" "${entry#*|}"
done
