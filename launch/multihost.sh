#!/usr/bin/env bash
# Multi-host data parallelism: run this same command on every host. Each process feeds its local devices and the
# contrastive loss is global over all devices (jax.distributed.initialize() is called because the environment
# names a coordinator). Required, fail fast when missing:
#   JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i launch/multihost.sh CONFIG WORKDIR
# On Cloud TPU pods and SLURM, JAX discovers them itself: set PCLIP_AUTODETECT=1 PCLIP_DISTRIBUTED=1 instead.
set -euo pipefail
config=${1:?usage: launch/multihost.sh CONFIG WORKDIR [overrides...]}; workdir=${2:?workdir}; shift 2
if [[ "${PCLIP_AUTODETECT:-0}" != 1 ]]; then
  for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID; do
    [[ -n "${!v:-}" ]] || { echo "launch/multihost.sh: $v is not set" >&2; exit 2; }
  done
fi
exec python3 -m pclip_jax.main --config "$config" --workdir "$workdir" "$@"
