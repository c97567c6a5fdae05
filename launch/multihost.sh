#!/usr/bin/env bash
# Multi-host data parallelism: run this same command on every host. Each process feeds its local devices and the
# contrastive loss is global over all devices (jax.distributed.initialize() is called because the environment
# names a coordinator). Required, fail fast when missing:
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i launch/multihost.sh CONFIG WORKDIR
# On Cloud TPU pods and SLURM, JAX discovers them itself: set PCLIP_AUTODETECT=1 PCLIP_DISTRIBUTED=1 instead.
# On one machine, for testing: N processes with a coordinator on 127.0.0.1, each with D CPU devices (default 4):
#   launch/multihost.sh --local N [--devices D] CONFIG WORKDIR [overrides...]
set -euo pipefail
if [[ "${1:-}" == "--local" ]]; then
  n=${2:?usage: launch/multihost.sh --local N [--devices D] CONFIG WORKDIR [overrides...]}; shift 2
  devices=4
  if [[ "${1:-}" == "--devices" ]]; then devices=${2:?--devices D}; shift 2; fi
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pids=()
  for ((i = 0; i < n; i++)); do
    JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i JAX_PLATFORMS=cpu \
      XLA_FLAGS="--xla_force_host_platform_device_count=$devices" "$0" "$@" &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  exit $status
fi
config=${1:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}; workdir=${2:?workdir}; shift 2
if [[ "${PCLIP_AUTODETECT:-0}" != 1 ]]; then
  for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID; do
    [[ -n "${!v:-}" ]] || { echo "launch/multihost.sh: $v is not set" >&2; exit 2; }
  done
fi
exec python3 -m pclip_jax.main --config "$config" --workdir "$workdir" "$@"
