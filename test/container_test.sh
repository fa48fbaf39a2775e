#!/usr/bin/env bash
# The local container test, run the way Grand Challenge runs the image, with the timing test:
#
#   test/container_test.sh
#
# 1. base image: $BASE_IMAGE if set, else the Dockerfile's default when present or pullable, else (offline
#    build hosts) a stand-in built by test/standin_base.sh (Debian bookworm, Python 3.11, the default base's
#    torch 2.7.1 CUDA 12.6 build with its nvidia-*-cu12 libraries from PyPI; reused once built). Without a GPU
#    the product runs on the CPU, on the torch GC runs.
# 2. builds the image with weights baked in and one without (build.sh, build.sh --no-weights);
# 3. runs the baked image on each test/input/<task> and compares the masks with test/expected_output/<task>
#    (Dice >= 0.999, identical geometry), printing each case's wall time against GC's 5-minute budget;
# 4. exports the model tarballs (export.sh --models-only), extracts each and runs the weightless image with
#    it at /opt/ml/model: the product runs from the tarball's layout alone; then the same with the members as
#    ONNX models (export.sh --models-only --onnx: the image's own export-onnx, its ONNX Runtime backend); then a
#    participant's own folds and spec (task1.toml's folds copied under Dataset777_MyFolds in a weights root of
#    their own, my_task1.toml naming them) through export.sh --ensemble --weights and through build.sh --ensemble
#    --weights (baked in), each run and its mask compared;
# 5. failures (a corrupt input image; the weightless image without a tarball; --device cuda where CUDA does not
#    start; a case larger than `docker run --memory` allows): exit 1, one line on stderr, no output file;
#    under a memory limit the sample case fits, its mask as expected;
# 6. the field: checkpoints written by nnU-Net 2.1 and 2.5.1 under numpy 1 (tests/fixtures/field) stripped by the
#    image's export code and predicted by the image, the same mask as their numpy-2 copy;
# 7. the pytest suite on the image's own torch (the stand-in's torch 2.7.1 CUDA build, on the CPU here).
# The baked runs' masks stay in test/output/<task>/ (git-ignored; $CONTAINER_TEST_RESULTS elsewhere) with one
# preview PNG per case in test/output/<task>/preview/, drawn by the image's `panther-ensemble preview` for a
# person to look at. On GC nothing but the masks is written into /output.
# Every run: --network none, read-only root filesystem and /input, an empty /tmp volume, a non-root user
# that the image does not know, --shm-size 64m, 16 GB of memory, at most 4 CPUs; --gpus all when a GPU is here.
# Without a GPU the runs get --budget 0, so that the product's deadline drops no member on a slow CPU and
# the masks still compare; the wall times are then shown for information (GC's budget is for its T4).
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

TAG="${TEST_TAG:-panther-ensemble:test}"
TAG_NO_WEIGHTS="$TAG-no-weights"
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
source test/base_image.sh

# --- 2. images
./build.sh --tag "$TAG"
./build.sh --tag "$TAG_NO_WEIGHTS" --no-weights

work="$(mktemp -d /tmp/panther-container-test.XXXXXX)"
chmod a+rx "$work"  # the image's runs read their folders in it as another user
trap 'rm -rf "$work"' EXIT
if [[ $(id -u) == 0 ]]; then run_user="12345:12345"; else run_user="$(id -u):$(id -g)"; fi
gpu=()
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then gpu=(--gpus all); fi
cpus="$(nproc)"
((cpus > 4)) && cpus=4
echo "== runs as user $run_user, $cpus CPU(s), ${gpu[*]:-no GPU}"
app_args=()  # GC passes none
no_gpu_env=()
if [[ ${#gpu[@]} -eq 0 ]]; then
    # The product drops members that would finish past its deadline; on a slow CPU host that would change
    # the masks. GC runs the image on a T4, where the timing below is meant to hold.
    app_args=(--budget 0)
    # PyTorch's images set NVIDIA_VISIBLE_DEVICES=all: without GPUs the product would warn on stderr that CUDA does
    # not start (tested once below); the other runs say that no GPU is meant, as the NVIDIA runtime's "void" does
    no_gpu_env=(--env NVIDIA_VISIBLE_DEVICES=void)
    echo "   CPU-only host: the runs get --budget 0 (no member is dropped, so the masks compare) and NVIDIA_VISIBLE_DEVICES=void"
fi

# gc_run NAME IMAGE INPUT_DIR [docker options...]: run the image GC-style; output in $work/NAME/output,
# stdout and stderr in $work/NAME/{stdout,stderr}; sets run_rc and run_s.
extra_args=()  # more arguments for the product, set around one gc_run
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
        "${no_gpu_env[@]}" "$@" "$image" "${app_args[@]}" "${extra_args[@]}" > "$work/$name/stdout" \
        2> "$work/$name/stderr" || run_rc=$?
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
    if [[ -s "$work/$name/stderr" ]] && ! [[ -n "${expected_warning:-}" && "$(wc -l < "$work/$name/stderr")" == 1 ]] \
        || { [[ -n "${expected_warning:-}" ]] && ! grep -q "^warning: $expected_warning" "$work/$name/stderr"; }; then
        show_logs "$name"
        fail "$name: the run wrote to stderr (GC shows it as warnings)${expected_warning:+; expected one line: warning: $expected_warning}"
    fi
    docker run --rm --network none --read-only --user "$run_user" --entrypoint python \
        --volume "$repo/test/expected_output/$task:/expected:ro" --volume "$work/$name/output:/output:ro" \
        --volume "$repo/test/compare_masks.py:/compare_masks.py:ro" \
        "$TAG" /compare_masks.py /expected /output "$OUTPUT_SOCKET" \
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

# field_runs: the field's folds (tests/fixtures/field: nnU-Net 2.1 and 2.5.1 under numpy 1, and the numpy-2 copy),
# each staged by the image's export code (model_tarball: the checkpoint stripped with the image's torch, a manifest)
# and predicted GC-style from /opt/ml/model by the weightless image; the numpy-1 and numpy-2 copies of the same
# weights must give the same mask, and a mask with voxels in it (label 2, the pancreas: the folds are barely trained;
# the spec says so with tumor_label_name, as the label check asks).
FIELD_MODEL="Dataset990_Field/nnUNetTrainerFieldFixture__nnUNetPlans__3d_fullres"
field_runs() {
    local fixtures="$repo/tests/fixtures/field" entry era checkpoint name
    for entry in nnunetv2-2.1:checkpoint_final.pth nnunetv2-2.5.1:checkpoint_final.pth \
                 nnunetv2-2.5.1:checkpoint_final_numpy2.pth; do
        era="${entry%%:*}" checkpoint="${entry#*:}"
        name="field-$era-${checkpoint%.pth}"
        echo "== $name: $era's fold ($checkpoint) staged by the image's export code, predicted from /opt/ml/model"
        mkdir -p "$work/$name/spec" "$work/$name/model"
        chmod a+rwx "$work/$name/model"
        printf 'input_socket = "abdominal-t1-mri"\noutput_socket = "%s"\ntumor_label = 2\ntumor_label_name = "pancreas"\n[[member]]\nmodel = "%s"\nfold = 0\ncheckpoint = "%s"\n' \
            "$OUTPUT_SOCKET" "$FIELD_MODEL" "$checkpoint" > "$work/$name/spec/field.toml"
        docker run --rm --network none --user "$run_user" --entrypoint python --env PYTHONPATH=/opt/app/src \
            --volume "$work/$name/spec:/in/spec:ro" --volume "$fixtures/$era:/in/weights:ro" \
            --volume "$work/$name/model:/stage" "$TAG" -m panther_ensemble.app.model_tarball --weights /in/weights \
            --out /stage /in/spec/field.toml | sed 's/^/   /' || fail "$name: the image's export code could not stage the fold"
        gc_run "$name" "$TAG_NO_WEIGHTS" "$fixtures/input" --volume "$work/$name/model:/opt/ml/model:ro"
        if [[ $run_rc != 0 || -s "$work/$name/stderr" ]]; then
            show_logs "$name"; fail "$name: exit code $run_rc, or output on stderr"
        fi
        grep -E '^(summary|timing)' "$work/$name/stdout" | sed 's/^/   /'
    done
    docker run --rm --network none --read-only --user "$run_user" --entrypoint python --volume "$work:/work:ro" \
        "$TAG" -c '
import sys
import numpy as np, SimpleITK as sitk
masks = {era: sitk.GetArrayFromImage(sitk.ReadImage(f"/work/field-{era}/output/images/'"$OUTPUT_SOCKET"'/field.mha"))
         for era in ("nnunetv2-2.5.1-checkpoint_final", "nnunetv2-2.5.1-checkpoint_final_numpy2",
                     "nnunetv2-2.1-checkpoint_final")}
one, two = masks["nnunetv2-2.5.1-checkpoint_final"], masks["nnunetv2-2.5.1-checkpoint_final_numpy2"]
old = masks["nnunetv2-2.1-checkpoint_final"]
print(f"   numpy 1 vs numpy 2 copy: {int((one != two).sum())} voxels differ, {int(one.sum())} voxels of label 2; "
      f"the nnU-Net 2.1 fold: {int(old.sum())}")
sys.exit(0 if np.array_equal(one, two) and one.any() and old.any() else 1)' \
        || fail "the numpy-1 and numpy-2 copies of the same fold gave different (or empty) masks"
}

# suite_in_image: the repository's pytest suite run by the image's Python and torch (read-only checkout, /tmp for
# the tests' files), with pytest added on top of the image
# the dev extra's test tools the image lacks, at the versions constraints-cpu.txt pins (hypothesis: the property tests;
# openvino: the openvino backend's tests, which the image itself leaves out)
mapfile -t SUITE_REQUIREMENTS < <(grep -E '^(panimg|kubernetes-validate|hypothesis|openvino|openvino-telemetry)==' "$repo/constraints-cpu.txt")
SUITE_REQUIREMENTS=(pytest==9.2.0 "${SUITE_REQUIREMENTS[@]}")
suite_in_image() {
    echo "== the pytest suite on the image's own Python and torch ($TAG with ${SUITE_REQUIREMENTS[*]})"
    # and a panther-ensemble command, as the dev install has one (the image runs inference.py)
    printf 'FROM %s\nUSER root\nRUN PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 python -m pip install -q --no-cache-dir %s && printf "#!/bin/sh\\nexec python -m panther_ensemble.cli \\"\\$@\\"\\n" > /usr/local/bin/panther-ensemble && chmod 755 /usr/local/bin/panther-ensemble\nUSER user\n' \
        "$TAG" "${SUITE_REQUIREMENTS[*]}" | docker build -q --network host -t "$TAG-suite" - >/dev/null 2>&1 \
        || fail "the suite's image (pytest on $TAG) could not be built"
    local start code=0
    start="$(now)"
    docker run --rm --network none --read-only --user "$run_user" --tmpfs /tmp:exec --shm-size 256m \
        --memory 16g --cpus "$cpus" "${no_gpu_env[@]}" --volume "$repo:/repo:ro" --workdir /repo \
        --env PYTHONPATH=/repo/src --env PANTHER_APP_DIR=/repo --env PYTHONDONTWRITEBYTECODE=1 \
        --entrypoint python "$TAG-suite" -c "import torch; print('   torch', torch.__version__, 'CUDA', torch.version.cuda)" 
    docker run --rm --network none --read-only --user "$run_user" --tmpfs /tmp:exec --shm-size 256m \
        --memory 16g --cpus "$cpus" "${no_gpu_env[@]}" --volume "$repo:/repo:ro" --workdir /repo \
        --env PYTHONPATH=/repo/src --env PANTHER_APP_DIR=/repo --env PYTHONDONTWRITEBYTECODE=1 \
        --entrypoint python "$TAG-suite" -m pytest -q -p no:cacheprovider --basetemp /tmp/pytest tests \
        >"$work/suite.log" 2>&1 || code=$?
    tail -5 "$work/suite.log" | sed 's/^/   /'
    if ((code != 0)); then  # what failed, as pytest said it (the log goes with $work)
        sed -n '/^=* FAILURES =*$/,$p' "$work/suite.log" | tail -150 | sed 's/^/   | /'
        fail "the pytest suite failed on the image's torch"
    fi
    echo "   suite on the image's torch in $(elapsed "$start") s"
}

# --- 3. baked-in weights; the first run with the image's own environment (NVIDIA_VISIBLE_DEVICES=all): on a host
# without GPUs the product must say so on stderr, in one line, and still write the mask
times=()
for task in "${tasks[@]}"; do
    echo "== $task: baked-in weights ($TAG)"
    if [[ $task == "${tasks[0]}" && ${#gpu[@]} -eq 0 ]]; then
        echo "   with the image's NVIDIA_VISIBLE_DEVICES=all and no GPU: one warning line expected"
        saved_env=("${no_gpu_env[@]}"); no_gpu_env=()
        expected_warning="a GPU is expected (NVIDIA_VISIBLE_DEVICES=all) but CUDA does not start, running on the CPU: "
        gc_run "$task-baked" "$TAG" "$repo/test/input/$task"
        check_case "$task-baked" "$task"
        echo "   stderr: $(cat "$work/$task-baked/stderr")"
        no_gpu_env=("${saved_env[@]}"); expected_warning=""
    else
        gc_run "$task-baked" "$TAG" "$repo/test/input/$task"
        check_case "$task-baked" "$task"
    fi
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
        grep -q "members ($backend) of Dataset90[12]_PantherT[12] from /opt/ml/model" "$work/$name/stdout" \
            || { show_logs "$name"; fail "$name: the members were not loaded by $backend from /opt/ml/model"; }
        check_case "$name" "$task"
    done
}
tarball_runs tarball torch
tarball_runs onnx onnxruntime --onnx

# --- a participant's own folds and spec (the demo's Task 1 folds that task1.toml names, copied into a weights root
# of their own under another dataset folder, Dataset777_MyFolds, and a spec naming them), both routes to GC: the
# model tarball (export.sh --ensemble --weights: the image's export-model) and the image with it baked in
# (build.sh --ensemble --weights)
mine="$work/mine"
mkdir -p "$mine" && chmod a+rwx "$mine"
docker run --rm --network none --read-only --user "$run_user" --entrypoint python --volume "$repo:/repo:ro" \
    --volume "$mine:/mine" "$TAG" -c '
import shutil, tomllib
from pathlib import Path
spec = Path("/repo/ensemble/task1.toml").read_text()
for member in tomllib.loads(spec)["member"]:
    source = Path("/repo/weights", member["model"])
    target = Path("/mine/weights/Dataset777_MyFolds", source.name)
    for name in ("plans.json", "dataset.json", Path("fold_" + str(member["fold"]), member["checkpoint"])):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, target / name)
Path("/mine/my_task1.toml").write_text(spec.replace("Dataset901_PantherT1/", "Dataset777_MyFolds/"))' \
    || fail "the participant's folds could not be copied"
echo "== a participant's folds (Dataset777_MyFolds) and spec, my_task1.toml: export.sh --ensemble --weights (model" \
    "tarball) and build.sh --ensemble --weights (baked in)"
./export.sh --tag "$TAG" --out "$work/export-mine" --models-only --ensemble "$mine/my_task1.toml" \
    --weights "$mine/weights"
mkdir "$work/model-mine" && tar -xzf "$work/export-mine/model-my_task1.tar.gz" -C "$work/model-mine"
gc_run "${tasks[0]}-mine-tarball" "$TAG_NO_WEIGHTS" "$repo/test/input/${tasks[0]}" \
    --volume "$work/model-mine:/opt/ml/model:ro"
grep -q "/opt/ml/model/my_task1.toml" "$work/${tasks[0]}-mine-tarball/stdout" \
    || { show_logs "${tasks[0]}-mine-tarball"; fail "the participant's spec was not taken from the model tarball"; }
grep -q "members (torch) of Dataset777_MyFolds from /opt/ml/model" "$work/${tasks[0]}-mine-tarball/stdout" \
    || { show_logs "${tasks[0]}-mine-tarball"; fail "the participant's folds were not the ones run"; }
check_case "${tasks[0]}-mine-tarball" "${tasks[0]}"
./build.sh --tag "$TAG-mine" --api exec --ensemble "$mine/my_task1.toml" --weights "$mine/weights"
[[ "$(docker run --rm --entrypoint ls "$TAG-mine" /opt/app/ensemble)" == "my_task1.toml" ]] \
    || fail "$TAG-mine: its ensemble/ holds more than the participant's spec"
gc_run "${tasks[0]}-mine-baked" "$TAG-mine" "$repo/test/input/${tasks[0]}"
grep -q "/opt/app/ensemble/my_task1.toml" "$work/${tasks[0]}-mine-baked/stdout" \
    || { show_logs "${tasks[0]}-mine-baked"; fail "the baked image did not run the participant's spec"; }
check_case "${tasks[0]}-mine-baked" "${tasks[0]}"

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
if [[ ${#gpu[@]} -eq 0 ]]; then
    extra_args=(--device cuda)
    expect_failure no-cuda "--device cuda where CUDA does not start" "$TAG" "$repo/test/input/${tasks[0]}"
    extra_args=()
fi

# --- memory as GC limits it: the container's cgroup limit, not the host's memory, decides
memory_limit=1g
large="$work/large-input"
mkdir -p "$large/images/abdominal-t1-mri"
chmod -R a+rwX "$large"
docker run --rm --network none --user "$run_user" --entrypoint python --volume "$large:/large" "$TAG" -c '
import numpy as np, SimpleITK as sitk
noise = np.random.default_rng(0).integers(1, 900, (200, 512, 512), dtype=np.int16)  # a scanner: nowhere 0
image = sitk.GetImageFromArray(noise)
image.SetSpacing((0.7, 0.7, 1.5))
sitk.WriteImage(image, "/large/images/abdominal-t1-mri/large.mha", useCompression=True)'
start="$(now)"
expect_failure memory-too-small "a 512 x 512 x 200 case under docker run --memory $memory_limit" "$TAG" "$large" \
    --memory "$memory_limit" --memory-swap "$memory_limit"
echo "   ended in $(elapsed "$start") s, before any heavy work (never an OOM kill: exit 137)"
echo "== ${tasks[0]}: the sample case under docker run --memory $memory_limit: fits, the same mask"
gc_run "${tasks[0]}-memory" "$TAG" "$repo/test/input/${tasks[0]}" --memory "$memory_limit" --memory-swap "$memory_limit"
check_case "${tasks[0]}-memory" "${tasks[0]}"

# --- 6. the field's checkpoints (numpy 1, nnU-Net 2.1 and 2.5.1) through the image's own export code and torch
field_runs
# --- 7. the pytest suite on the image's torch
suite_in_image

echo "== container test passed in $((SECONDS - test_start)) s (base $BASE_IMAGE); wall time per case:"
for entry in "${times[@]}"; do
    printf '   %-20s %6.1f s (budget %d s)\n' "${entry% *}" "${entry#* }" "$BUDGET_S"
done
