#!/usr/bin/env bash
# The accelerator figures in one run, on one GPU or TPU host:
#   * benchmarks/model_speed.py: PacketCLIP (configs/default.py) and every peer at its published size, inference and
#     training flows/s, FLOPs, MFU, float32 and bfloat16 (random inputs: nothing read from disk);
#   * benchmarks/train_throughput.py: the accelerator-sized pre-training through the real input pipeline (a built
#     nDPI dataset, read per batch), against the same step on a device-resident batch; float32 and bfloat16 at the
#     default global batch 1024, and bfloat16 at 8192.
# Each part runs even if an earlier one failed (PART_TIMEOUT=SECONDS bounds each one); the JSON and log of each
# land in OUT; the exit status is the number of parts that failed.
#
#   launch/accelerator_benchmarks.sh OUT [--manual-dir DIR] [--encoder DIR] [--workdir W] [--steps N]
#
# --manual-dir: the nDPI captures (default ../shared/data/ndpi); when W/data already holds the built dataset (e.g.
# built on another host with the same command), the captures are not read again. --encoder: the text encoder
# directory (default ../shared/models/all-MiniLM-L6-v2). model_speed runs at batch 256 (YaTC's float32 training step
# needs ~160 MB a flow: 400 patches x 16 heads of attention, XLA's memory analysis on the CPU) and NetMamba at 64:
# its selective scan is written in JAX (associative scan) and keeps [batch, 400, 512, 16] states per layer, ~180 MB
# a flow in a float32 training step (measured on an H200).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: launch/accelerator_benchmarks.sh OUT [--manual-dir DIR] [--encoder DIR] [--workdir W] [--steps N]}
shift
MANUAL=../shared/data/ndpi
ENCODER=../shared/models/all-MiniLM-L6-v2
WORK=/tmp/pclip-accelerator
STEPS=100
while [ $# -gt 0 ]; do
  case "$1" in
    --manual-dir) MANUAL=$2; shift 2 ;;
    --encoder) ENCODER=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    *) echo "accelerator_benchmarks.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
ENCODER=$(cd "$ENCODER" && pwd) || { echo "accelerator_benchmarks.sh: --encoder $ENCODER: no such directory" >&2; exit 2; }
PY=${PYTHON:-python3}
failed=0
part() {  # part NAME COMMAND...: runs one measurement, its output also in OUT/NAME.log
  local name=$1; shift
  echo "=== $name: $*" >&2
  local start=$SECONDS
  ${PART_TIMEOUT:+timeout "$PART_TIMEOUT"} "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -E '^\s*$|it/s\]|examples/s\]'
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc, $((SECONDS - start)) s" >&2
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
export PYTHONUNBUFFERED=1
part train_throughput "$PY" benchmarks/train_throughput.py --config configs/default.py --corpus-scale 1 \
  --steps "$STEPS" --workdir "$WORK" --manual-dir "$MANUAL" --set "text.encoder=$ENCODER" \
  --json "$OUT/train_throughput.json"
part model_speed "$PY" benchmarks/model_speed.py --config configs/default.py --size published --batch 256 \
  --models pclip,etbert,yatc,cnn1d,fsnet --json "$OUT/model_speed.json"
part model_speed_netmamba "$PY" benchmarks/model_speed.py --config configs/default.py --size published --batch 64 \
  --models pclip,netmamba --json "$OUT/model_speed_netmamba.json"
part train_throughput_b8192 "$PY" benchmarks/train_throughput.py --config configs/default.py --corpus-scale 1 \
  --steps "$STEPS" --workdir "$WORK" --manual-dir "$MANUAL" --set "text.encoder=$ENCODER" \
  --set train.batch_size=8192 --dtypes bfloat16 --json "$OUT/train_throughput_b8192.json"
echo "accelerator_benchmarks.sh: $failed part(s) failed; figures in $OUT" >&2
exit "$failed"
