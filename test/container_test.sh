#!/usr/bin/env bash
# The local container test, run the way Grand Challenge runs the image, with the timing test:
#
#   test/container_test.sh
#
# 1. base image: $BASE_IMAGE if set, else the Dockerfile's default when present or pullable, else (offline
#    build hosts) a stand-in built by test/standin_base.sh (Debian bookworm, Python 3.11, CPU torch; reused
#    once built). The stand-in tests the product and the Dockerfile, not the CUDA base.
# 2. builds the image with weights baked in and one without (build.sh, build.sh --no-weights);
# 3. runs the baked image on each test/input/<task> and compares the masks with test/expected_output/<task>
#    (Dice >= 0.999, identical geometry), printing each case's wall time against GC's 5-minute budget;
# 4. exports the model tarballs (export.sh --models-only), extracts each and runs the weightless image with
#    it at /opt/ml/model: the product runs from the tarball's layout alone; then the same with the members as
#    ONNX models (export.sh --models-only --onnx: the image's own export-onnx, its ONNX Runtime backend);
# 5. failures (a corrupt input image; the weightless image without a tarball): exit 1, one line on stderr,
#    no output file.
# The baked runs' masks stay in test/output/<task>/ (git-ignored; $CONTAINER_TEST_RESULTS elsewhere) with one
# preview PNG per case in test/output/<task>/preview/, drawn by the image's `panther-ensemble preview` for a
# person to look at. On GC nothing but the masks is written into /output.
# Every run: --network none, read-only root filesystem and /input, an empty /tmp volume, a non-root user
# that the image does not know, --shm-size 64m, 16 GB of memory, at most 4 CPUs; --gpus all when a GPU is here.
# Without a GPU the runs get --budget 0, so that the product's deadline drops no member on a slow CPU and
# the masks still compare; the wall times are then shown for information (GC's budget is for its T4).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

TAG="${TEST_TAG:-panther-ensemble:test}"
TAG_NO_WEIGHTS="$TAG-no-weights"
STANDIN="panther-ensemble-standin-base:bookworm-torch2.13.0-cpu"
BUDGET_S=300
OUTPUT_SOCKET="pancreatic-tumor-segmentation"

fail() { echo "container_test: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }  # seconds since $1
test_start=$SECONDS

docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info); start dockerd first"
tasks=()
for dir in test/input/*/; do
    [[ -d "$dir" ]] && tasks+=("$(basename "$dir")")
done
[[ ${#tasks[@]} -gt 0 ]] || fail "no test cases: test/input/<task>/ (GC layout) and test/expected_output/<task>/ are missing"
for task in "${tasks[@]}"; do
    [[ -d "test/expected_output/$task" ]] || fail "test/expected_output/$task is missing (expected masks for test/input/$task)"
    [[ -f "ensemble/$task.toml" ]] || fail "ensemble/$task.toml is missing (the spec for test/input/$task)"
done
echo "== container test: tasks ${tasks[*]}"

# --- 1. base image
if [[ -n "${BASE_IMAGE:-}" ]]; then
    echo "== base image $BASE_IMAGE (from BASE_IMAGE)"
else
    default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)"
    if docker image inspect "$default_base" >/dev/null 2>&1 || docker pull -q "$default_base"; then
        BASE_IMAGE="$default_base"
        echo "== base image $BASE_IMAGE"
    else
        echo "== cannot pull $default_base (offline build host): using the stand-in base $STANDIN"
        echo "   (Debian bookworm, Python 3.11, CPU torch; it tests the product and the Dockerfile, not the CUDA base)"
        if docker image inspect "$STANDIN" >/dev/null 2>&1; then
            echo "   stand-in base already built"
        else
            test/standin_base.sh "$STANDIN"
        fi
        BASE_IMAGE="$STANDIN"
    fi
fi
export BASE_IMAGE

# --- 2. images
./build.sh --tag "$TAG"
./build.sh --tag "$TAG_NO_WEIGHTS" --no-weights

work="$(mktemp -d /tmp/panther-container-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
if [[ $(id -u) == 0 ]]; then run_user="12345:12345"; else run_user="$(id -u):$(id -g)"; fi
gpu=()
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu=(--gpus all); fi
cpus="$(nproc)"
((cpus > 4)) && cpus=4
echo "== runs as user $run_user, $cpus CPU(s), ${gpu[*]:-no GPU}"
app_args=()  # GC passes none
if [[ ${#gpu[@]} -eq 0 ]]; then
    # The product drops members that would finish past its deadline; on a slow CPU host that would change
    # the masks. GC runs the image on a T4, where the timing below is meant to hold.
    app_args=(--budget 0)
    echo "   CPU-only host: the runs get --budget 0 (no member is dropped, so the masks compare)"
fi

# gc_run NAME IMAGE INPUT_DIR [docker options...]: run the image GC-style; output in $work/NAME/output,
# stdout and stderr in $work/NAME/{stdout,stderr}; sets run_rc and run_s.
gc_run() {
    local name="$1" image="$2" input="$3"
    shift 3
    mkdir -p "$work/$name/output"
    chmod a+rwx "$work/$name/output"
    local start
    start="$(now)"
    run_rc=0
    docker run --rm --platform=linux/amd64 --network none --read-only --user "$run_user" --shm-size 64m \
        --memory 16g --cpus "$cpus" "${gpu[@]}" \
        --volume "$input:/input:ro" --volume "$work/$name/output:/output" --mount type=volume,destination=/tmp \
        "$@" "$image" "${app_args[@]}" > "$work/$name/stdout" 2> "$work/$name/stderr" || run_rc=$?
    run_s="$(elapsed "$start")"
}

show_logs() {
    echo "--- stdout (last 15 lines)"; tail -15 "$work/$1/stdout"
    echo "--- stderr"; cat "$work/$1/stderr"
}

# check_case NAME TASK: the run succeeded, wrote only the expected masks, matching them; no warnings on stderr.
check_case() {
    local name="$1" task="$2"
    if [[ $run_rc != 0 ]]; then show_logs "$name"; fail "$name: exit code $run_rc"; fi
    if [[ -s "$work/$name/stderr" ]]; then show_logs "$name"; fail "$name: the run wrote to stderr (GC shows it as warnings)"; fi
    docker run --rm --network none --read-only --user "$run_user" --entrypoint python \
        --volume "$repo/test/expected_output/$task:/expected:ro" --volume "$work/$name/output:/output:ro" \
        "$TAG" -c "$COMPARE_PY" /expected /output "$OUTPUT_SOCKET" \
        || { show_logs "$name"; fail "$name: the masks differ from test/expected_output/$task"; }
    grep -E '^(summary|timing)' "$work/$name/stdout" | sed 's/^/   /' || true
    awk -v s="$run_s" -v b="$BUDGET_S" -v n="$name" -v gpu="${#gpu[@]}" 'BEGIN {
        printf "   %s: %.1f s wall time of the %d s budget per case (%.0f%%)%s\n", n, s, b, 100 * s / b,
            s <= b ? "" : (gpu ? "  OVER BUDGET" : "  over budget on this CPU-only host (GC runs on a T4)") }'
    if [[ ${#gpu[@]} -gt 0 ]] && awk -v s="$run_s" -v b="$BUDGET_S" 'BEGIN { exit !(s > b) }'; then
        fail "$name: over the $BUDGET_S s budget"
    fi
    times+=("$name $run_s")
}

# Compare every expected mask with the output of the same name: same pixel type and geometry, Dice >= 0.999.
COMPARE_PY='
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

expected_dir, output_dir, socket = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
expected = sorted((expected_dir / "images" / socket).glob("*.mha"))
written = sorted((output_dir / "images" / socket).glob("*.mha"))
ok = bool(expected) and [p.name for p in expected] == [p.name for p in written]
if not ok:
    print(f"   expected {[p.name for p in expected]}, written {[p.name for p in written]}")
for want_file in expected:
    if not (output_dir / "images" / socket / want_file.name).exists():
        continue
    want, got = sitk.ReadImage(str(want_file)), sitk.ReadImage(str(output_dir / "images" / socket / want_file.name))
    same_grid = (want.GetSize() == got.GetSize() and got.GetPixelID() == sitk.sitkUInt8
                 and np.allclose(want.GetSpacing(), got.GetSpacing(), rtol=0, atol=1e-6)
                 and np.allclose(want.GetOrigin(), got.GetOrigin(), rtol=0, atol=1e-6)
                 and np.allclose(want.GetDirection(), got.GetDirection(), rtol=0, atol=1e-6))
    a, b = sitk.GetArrayViewFromImage(want) > 0, sitk.GetArrayViewFromImage(got) > 0
    total = int(a.sum() + b.sum())
    dice = 1.0 if total == 0 else 2 * int((a & b).sum()) / total
    geometry = "identical" if same_grid else "DIFFERENT"
    print(f"   {want_file.name}: Dice {dice:.5f} ({int(a.sum())} expected, {int(b.sum())} written tumor voxels), "
          f"geometry {geometry}")
    ok = ok and same_grid and dice >= 0.999
sys.exit(0 if ok else 1)
'

# keep_with_previews TASK: the baked run's masks into $results/TASK, a preview PNG per case beside them.
results="${CONTAINER_TEST_RESULTS:-$repo/test/output}"
keep_with_previews() {
    local task="$1" mask name image
    rm -rf "${results:?}/$task" && mkdir -p "$results/$task/preview"
    cp -r "$work/$task-baked/output/." "$results/$task/"
    chmod -R a+rwX "$results/$task"
    for mask in "$results/$task/images/$OUTPUT_SOCKET"/*.mha; do
        name="$(basename "$mask" .mha)"
        image="$(cd "test/input/$task" && find images -name "$name.*" | head -1)"
        docker run --rm --network none --read-only --user "$run_user" --tmpfs /tmp --entrypoint python \
            --env PYTHONPATH=/opt/app/src --volume "$repo/test/input/$task:/input:ro" \
            --volume "$results/$task:/results" "$TAG" -m panther_ensemble.cli preview --image "/input/$image" \
            --mask "/results/images/$OUTPUT_SOCKET/$name.mha" --out "/results/preview/$name.png" >/dev/null \
            || fail "$task: the preview of $name could not be drawn"
        echo "   preview: ${results#"$repo/"}/$task/preview/$name.png"
    done
}

# --- 3. baked-in weights
times=()
for task in "${tasks[@]}"; do
    echo "== $task: baked-in weights ($TAG)"
    gc_run "$task-baked" "$TAG" "$repo/test/input/$task"
    check_case "$task-baked" "$task"
    keep_with_previews "$task"
done

# --- 4. weights only from the model tarball, at /opt/ml/model
# tarball_runs KIND BACKEND [export.sh options...]: export the model tarballs and run the weightless image on
# each task with its tarball at /opt/ml/model; the log must show the spec and the members loaded from there by
# BACKEND, and the masks must match. ONNX tarballs must hold no checkpoint.
tarball_runs() {
    local kind="$1" backend="$2" task name model
    shift 2
    ./export.sh --tag "$TAG" --out "$work/export-$kind" --models-only "$@"
    for task in "${tasks[@]}"; do
        name="$task-$kind"
        echo "== $task: model-$task.tar.gz ($backend members) at /opt/ml/model, image without weights ($TAG_NO_WEIGHTS)"
        model="$work/model-$name"
        mkdir "$model"
        tar -xzf "$work/export-$kind/model-$task.tar.gz" -C "$model"
        if [[ $backend == onnxruntime && -n "$(find "$model" -name '*.pth')" ]]; then
            fail "the ONNX tarball of $task holds checkpoints"
        fi
        gc_run "$name" "$TAG_NO_WEIGHTS" "$repo/test/input/$task" --volume "$model:/opt/ml/model:ro"
        grep -q "/opt/ml/model/$task.toml" "$work/$name/stdout" \
            || { show_logs "$name"; fail "$name: the spec was not taken from /opt/ml/model"; }
        grep -q "members ($backend) from /opt/ml/model" "$work/$name/stdout" \
            || { show_logs "$name"; fail "$name: the members were not loaded by $backend from /opt/ml/model"; }
        check_case "$name" "$task"
    done
}
tarball_runs tarball torch
tarball_runs onnx onnxruntime --onnx

# --- 5. failures: exit 1, one 'error:' line on stderr, no output file
expect_failure() {  # NAME WHAT IMAGE INPUT [docker options...]
    local name="$1" what="$2"
    shift 2
    echo "== $what: exit 1, one error line, no output"
    gc_run "$name" "$@"
    local lines
    lines="$(wc -l < "$work/$name/stderr")"
    if [[ $run_rc != 1 || $lines != 1 ]] || ! grep -q '^error: ' "$work/$name/stderr"; then
        show_logs "$name"
        fail "$what: expected exit 1 and one 'error:' line on stderr, got exit $run_rc and $lines line(s)"
    fi
    [[ -z "$(find "$work/$name/output" -mindepth 1 -type f)" ]] || fail "$what: an output file was written"
    echo "   exit 1: $(cat "$work/$name/stderr")"
}
bad="$work/bad-input"
cp -r "test/input/${tasks[0]}" "$bad"
chmod -R a+rX "$bad"
find "$bad/images" -name '*.mha' -exec sh -c 'echo "not an image" > "$1"' sh {} \;
expect_failure bad-image "corrupt input image" "$TAG" "$bad"
expect_failure no-model "image without weights and no model tarball" "$TAG_NO_WEIGHTS" "$repo/test/input/${tasks[0]}"

echo "== container test passed in $((SECONDS - test_start)) s (base $BASE_IMAGE); wall time per case:"
for entry in "${times[@]}"; do
    printf '   %-20s %6.1f s (budget %d s)\n' "${entry% *}" "${entry#* }" "$BUDGET_S"
done
