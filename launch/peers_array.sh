#!/usr/bin/env bash
# The peer sweep as a job array: every task runs its shard of the (dataset, model, fraction, seed) cells into one
# shared workdir (each cell its own file, so tasks never write the same file and a rerun resumes; a pclip cell and
# its hybrid share a shard, and a lock keeps two tasks from training one PacketCLIP run at once).
#   SLURM:  sbatch --array=0-7 launch/peers_array.sh W [peers.py args...]     (shard = task id / task count)
#   local:  launch/peers_array.sh --local 2 W [peers.py args...]              (N background processes here)
# When all tasks are done: python benchmarks/peers.py --workdir W --summary-only
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ "${1:-}" == "--local" ]]; then
  n=${2:?usage: launch/peers_array.sh --local N WORKDIR [args...]}; workdir=${3:?workdir}; shift 3
  pids=()
  for ((i = 0; i < n; i++)); do
    python3 "$here/benchmarks/peers.py" --workdir "$workdir" --shard "$i/$n" "$@" > "$workdir.shard$i.log" 2>&1 &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  exit $status
fi
workdir=${1:?usage: launch/peers_array.sh WORKDIR [args...]}; shift
task=${SLURM_ARRAY_TASK_ID:?not a SLURM array task (use --local N here)}
count=${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT unset}
exec python3 "$here/benchmarks/peers.py" --workdir "$workdir" --shard "$task/$count" "$@"
