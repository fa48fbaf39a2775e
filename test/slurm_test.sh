#!/usr/bin/env bash
# The cohort test on a real scheduler: a one-node Slurm cluster on this machine, the product as an array job.
#
#   test/slurm_test.sh            (as root; from the repository, with the dev venv active or at .venv/)
#
# 1. Brings up Slurm (Debian's slurm-wlm and munge, installed when missing): a munge key, a one-node slurm.conf
#    with this machine's CPUs, munged, slurmctld and slurmd, in a scratch folder; stops them on exit.
# 2. Writes a random-weight ensemble and 8 phantom-like cases (panther_ensemble.demo.synthetic) and predicts them
#    in one process: the reference masks.
# 3. sbatch --array=0-2 of the README's recipe, deploy/slurm-array.sbatch (ENGINE=local: the product from this venv,
#    on the CPU; the shard from SLURM_ARRAY_TASK_ID): every case's mask exactly once (one record each), equal to the
#    single process's.
# 4. Resume: a second array whose task 0 is cancelled (scancel) once it has written one mask, then the same array
#    submitted again (the recipe always passes --skip-existing): only the cases missing after the cancel run (the
#    records say which), and all masks equal the reference.
# Where Slurm cannot be started it says why and fails.
case "${1:-}" in -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
start_all=$SECONDS

fail() { echo "slurm_test: FAILED: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || fail "must run as root (munge's key, Slurm's daemons)"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    [[ -f .venv/bin/activate ]] || fail "no dev venv: activate one, or set up .venv as the README says"
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
command -v panther-ensemble >/dev/null || fail "panther-ensemble is not installed in this venv"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "== installing slurm-wlm and munge (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || fail "could not install slurm-wlm and munge"
fi

work="$(mktemp -d /tmp/panther-slurm-test.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
    scancel --quiet --full -u root 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- 1. a one-node cluster
echo "== Slurm $(slurmctld -V | awk '{print $2}') on one node, $(nproc) CPUs"
host="$(hostname -s)"
mkdir -p "$work/etc" "$work/state" "$work/spool" "$work/log" "$work/munge/run" "$work/munge/lib"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"  # munged runs as root here (--force): its key is root's
munge_socket="$work/munge/run/munge.socket.2"
munged --force --key-file "$work/munge/munge.key" --socket "$munge_socket" --pid-file "$work/munge/run/munged.pid" \
    --log-file "$work/log/munged.log" --seed-file "$work/munge/lib/munged.seed" \
    || fail "munged does not start ($(tail -3 "$work/log/munged.log" 2>/dev/null))"
cat > "$work/etc/slurm.conf" <<EOF
ClusterName=panther
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_socket
CryptoType=crypto/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SlurmctldPort=16817
SlurmdPort=16818
NodeName=$host CPUs=$(nproc) RealMemory=$(free -m | awk '/^Mem:/ {print $2}') State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/etc/slurm.conf"
slurmctld -D -f "$SLURM_CONF" > "$work/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" > "$work/log/slurmd.out" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
    [[ $state == idle ]] && break
    sleep 1
done
[[ ${state:-} == idle ]] || fail "Slurm's node is not idle after 60 s (state '${state:-none}'):
$(tail -5 "$work/log/slurmctld.log" 2>/dev/null)
$(tail -5 "$work/log/slurmd.log" 2>/dev/null)"
echo "   node $host idle"

# --- 2. cases and the reference
python - "$work" <<'EOF'
import sys
from pathlib import Path

from panther_ensemble.demo import synthetic as syn

work = Path(sys.argv[1])
syn.write_random_demo(work / "demo")
images = {f"case_{i:02d}.mha": dict(shape_zyx=(12, 48, 56), spacing_xyz=(1.0, 1.0, 3.0), seed=300 + i)
          for i in range(8)}
syn.write_gc_input(work / "input", "abdominal-t1-mri", images)
EOF
panther-ensemble predict --input "$work/input" --ensemble "$work/demo/task1.toml" --weights "$work/demo/weights" \
    --device cpu --budget 0 --output "$work/reference" > "$work/log/reference.log" || fail "the single-process run failed"
echo "== 8 cases, the single-process reference in $(grep -o 'total [0-9.]*s' "$work/log/reference.log")"

# compare OUT RECORDS...: every case's mask once, equal to the reference; prints what the records say
compare() {
    python - "$work/reference" "$@" <<'EOF'
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

reference, output, records = Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
socket = "images/pancreatic-tumor-segmentation"
expected = sorted(p.name for p in (reference / socket).glob("*.mha"))
written = sorted(p.name for p in (output / socket).glob("*.mha"))
if written != expected:
    sys.exit(f"masks {written}, expected {expected}")
for name in expected:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(reference / socket / name)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(output / socket / name)))
    if not np.array_equal(a, b):
        sys.exit(f"{name}: differs from the single-process mask")
entries = [json.loads(line) for r in records for line in r.read_text().splitlines()]
ran = Counter(e["case"] for e in entries if e["status"] == "ok")
print(json.dumps({"ok": sorted(ran), "skipped": sorted(e["case"] for e in entries if e["status"] == "skipped"),
                  "twice": sorted(c for c, n in ran.items() if n > 1)}))
EOF
}

# submit NAME ARRAY OUTPUT RECORDS: the README's recipe (deploy/slurm-array.sbatch) as an array job, the product
# from this venv (ENGINE=local) on the CPU; a one-CPU node-sized request instead of the recipe's GPU one; prints the
# job id
submit() {
    ENGINE=local INPUT="$work/input" OUTPUT="$3" RECORDS="$4" BUDGET=0 \
        PANTHER_ARGS="--ensemble $work/demo/task1.toml --weights $work/demo/weights --device cpu" \
        sbatch --parsable --job-name "$1" --array "$2" --cpus-per-task 1 --mem 1G --gres none \
        --output "$work/log/$1-%a.out" --chdir "$repo" --export ALL deploy/slurm-array.sbatch
}
wait_for() {  # JOB: until it has left the queue
    for _ in $(seq 600); do
        [[ -z "$(squeue -h -j "$1" 2>/dev/null)" ]] && return 0
        sleep 1
    done
    fail "job $1 still queued after 600 s"
}

# --- 3. an array of three shards
started=$SECONDS
job="$(submit sharded 0-2 "$work/sharded" "$work/sharded.jsonl")"
echo "== sbatch --array=0-2 deploy/slurm-array.sbatch: job $job"
wait_for "$job"
result="$(compare "$work/sharded" "$work/sharded.jsonl")" || fail "sharded array: $result"
python -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if len(r['ok']) == 8 and not r['twice'] else 1)" \
    "$result" || fail "sharded array: not every case exactly once: $result"
grep -h "^shard " "$work"/log/sharded-*.out | sed 's/^/   /'
echo "   every case exactly once, equal to the single process ($((SECONDS - started)) s)"

# --- 4. cancel a task mid-run, resubmit with --skip-existing
started=$SECONDS
job="$(submit cancelled 0-1 "$work/resumed" "$work/cancelled.jsonl")"
echo "== sbatch --array=0-1 deploy/slurm-array.sbatch: job $job; task 0 cancelled once it has written a mask"
for _ in $(seq 300); do
    [[ -f "$work/cancelled.jsonl" ]] && grep -q '"shard": "0/2"' "$work/cancelled.jsonl" && break
    sleep 0.2
done
scancel "${job}_0"
wait_for "$job"
before="$(find "$work/resumed" -name '*.mha' ! -name '.*' -printf '%f\n' | sort | tr '\n' ' ')"
echo "   masks after the cancel: $before"
[[ $(wc -w <<< "$before") -lt 8 ]] || fail "task 0 finished before it was cancelled: nothing to resume"
job="$(submit resumed 0-1 "$work/resumed" "$work/resumed.jsonl")"  # the same recipe again: it resumes
wait_for "$job"
result="$(compare "$work/resumed" "$work/resumed.jsonl")" || fail "resumed array: $result"
python - "$result" "$before" <<'EOF' || fail "the resumed array ran other cases than the missing ones: $result"
import json
import sys

result, before = json.loads(sys.argv[1]), set(sys.argv[2].split())
missing = {f"case_{i:02d}.mha" for i in range(8)} - before
print(f"   resumed: ran {result['ok']}, skipped {len(result['skipped'])} finished mask(s)")
sys.exit(0 if set(result["ok"]) == missing and set(result["skipped"]) == before and not result["twice"] else 1)
EOF
echo "   only the missing cases ran; all masks equal the single process's ($((SECONDS - started)) s)"
panther-ensemble summarize "$work/sharded.jsonl" "$work/cancelled.jsonl" "$work/resumed.jsonl" | sed 's/^/   /'
echo "== slurm test passed in $((SECONDS - start_all)) s"
