#!/usr/bin/env bash
# The accelerator figures of issue 33 in one run of at most 10 minutes on one GPU (or TPU) host, JSON in OUT:
#   1. train_throughput.json: benchmarks/train_throughput.py, configs/default.py (K x B = 16 x 128, global batch 1024),
#      float32 and bfloat16, pre-training through the real input pipeline (a built nDPI dataset read from its fixed
#      layout, train.workers=0: threads, batches sent to the device ahead of their step) against the same step on a
#      device-resident batch: the input-bound ratio (budget <= 1.1), MFU; and the input pipeline alone per core and
#      with 1 and 4 worker processes (Grain);
#   2. model_speed_default.json: benchmarks/model_speed.py, PacketCLIP default config at batch 1024 and 8192, float32
#      and bfloat16 (random inputs): training flows/s, step ms, MFU (budget: >= 1,000,000 flows/s or >= 15 % MFU,
#      bf16 at least as fast as float32);
#   3. model_speed_quickstart.json: the same for configs/quickstart.py at batch 256 and 1024;
#   4. with --peers: the peers at published size beside PacketCLIP (batch 256; NetMamba at 64), as before.
# Each part runs even if an earlier one failed, under `timeout` with what is left of the 10 minutes (BUDGET_S, default
# 570 s; PART_TIMEOUT caps one part); OUT/NAME.log holds each part's output, OUT/summary.json the parts' exit codes
# and seconds; the exit status is the number of parts that failed or did not run.
#
#   launch/accelerator_benchmarks.sh OUT [--manual-dir DIR] [--encoder DIR] [--workdir W] [--steps N] [--peers]
#
# --manual-dir: the nDPI captures (default ../shared/data/ndpi); when W/data already holds the built dataset (e.g.
# built on another host with the same command), the captures are not read again. --encoder: the text encoder
# directory (default ../shared/models/all-MiniLM-L6-v2).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: launch/accelerator_benchmarks.sh OUT [--manual-dir DIR] [--encoder DIR] [--workdir W] [--steps N] [--peers]}
shift
MANUAL=../shared/data/ndpi
ENCODER=../shared/models/all-MiniLM-L6-v2
WORK=/tmp/pclip-accelerator
STEPS=100
PEERS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --manual-dir) MANUAL=$2; shift 2 ;;
    --encoder) ENCODER=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --peers) PEERS=1; shift ;;
    *) echo "accelerator_benchmarks.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
ENCODER=$(cd "$ENCODER" && pwd) || { echo "accelerator_benchmarks.sh: --encoder $ENCODER: no such directory" >&2; exit 2; }
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-570}
failed=0
summary=()
part() {  # part NAME COMMAND...: runs one measurement within what is left of the budget; output also in OUT/NAME.log
  local name=$1; shift
  local left=$((BUDGET_S - SECONDS))
  local limit=$left
  [ -n "${PART_TIMEOUT:-}" ] && [ "$PART_TIMEOUT" -lt "$limit" ] && limit=$PART_TIMEOUT
  if [ "$limit" -lt 30 ]; then
    echo "=== $name: skipped, ${left} s of the budget left" >&2
    failed=$((failed + 1)); summary+=("\"$name\": {\"exit\": null, \"seconds\": 0}")
    return
  fi
  echo "=== $name (at most $limit s): $*" >&2
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -E '^\s*$|it/s\]|examples/s\]|chunk/s\]|text/s\]'
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc, $((SECONDS - start)) s" >&2
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  summary+=("\"$name\": {\"exit\": $rc, \"seconds\": $((SECONDS - start))}")
}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
part train_throughput "$PY" benchmarks/train_throughput.py --config configs/default.py --corpus-scale 1 \
  --steps "$STEPS" --workdir "$WORK" --manual-dir "$MANUAL" --set "text.encoder=$ENCODER" --workers 1,4 \
  --json "$OUT/train_throughput.json"
part model_speed_default "$PY" benchmarks/model_speed.py --config configs/default.py --models pclip \
  --batch 1024,8192 --json "$OUT/model_speed_default.json"
part model_speed_quickstart "$PY" benchmarks/model_speed.py --config configs/quickstart.py --models pclip \
  --batch 256,1024 --json "$OUT/model_speed_quickstart.json"
if [ "$PEERS" -eq 1 ]; then
  # YaTC's float32 training step needs ~160 MB a flow (400 patches x 16 heads of attention), NetMamba's ~180 MB
  # (its selective scan keeps [batch, 400, 512, 16] states per layer): hence batches 256 and 64.
  part model_speed_peers "$PY" benchmarks/model_speed.py --config configs/default.py --size published --batch 256 \
    --models pclip,etbert,yatc,cnn1d,fsnet --json "$OUT/model_speed_peers.json"
  part model_speed_netmamba "$PY" benchmarks/model_speed.py --config configs/default.py --size published --batch 64 \
    --models pclip,netmamba --json "$OUT/model_speed_netmamba.json"
fi
(IFS=,; echo "{${summary[*]}, \"failed\": $failed, \"seconds\": $SECONDS}") > "$OUT/summary.json"
echo "accelerator_benchmarks.sh: $failed part(s) failed; figures in $OUT ($SECONDS s)" >&2
exit "$failed"
