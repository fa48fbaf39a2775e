#!/usr/bin/env bash
# A cohort on one machine with several GPUs: one shard per GPU, in parallel, resumable, with records.
#
#   deploy/multi-gpu.sh INPUT OUTPUT [more predict options...]      (GPUS=4 for four GPUs; default: all nvidia-smi sees)
#
# Each shard sees one GPU (CUDA_VISIBLE_DEVICES) and predicts every GPUS-th case; records go to OUTPUT/../records.jsonl
# unless RECORDS says otherwise. Rerun the same line to resume: finished masks are skipped.
# DEVICE=cpu runs the shards on the CPU (how the test suite tries this script).
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
input="${1:?usage: deploy/multi-gpu.sh INPUT OUTPUT [predict options...]}"
output="${2:?usage: deploy/multi-gpu.sh INPUT OUTPUT [predict options...]}"
shift 2
gpus="${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
[[ $gpus -ge 1 ]] || { echo "multi-gpu.sh: no GPU found (set GPUS, or DEVICE=cpu to try it on the CPU)" >&2; exit 1; }
records="${RECORDS:-$(dirname "$output")/records.jsonl}"
pids=()
for gpu in $(seq 0 $((gpus - 1))); do
    CUDA_VISIBLE_DEVICES="$gpu" panther-ensemble predict --input "$input" --output "$output" --shard "$gpu/$gpus" \
        --skip-existing --records "$records" --device "${DEVICE:-cuda}" "$@" > "$output.shard-$gpu.log" 2>&1 &
    pids+=($!)
done
failed=0
for gpu in "${!pids[@]}"; do
    wait "${pids[$gpu]}" || { echo "shard $gpu/$gpus failed: see $output.shard-$gpu.log" >&2; failed=1; }
done
panther-ensemble summarize "$records"
exit $failed
