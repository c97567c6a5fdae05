#!/usr/bin/env bash
# Single host, all local devices (CPU, one GPU box or one TPU VM):
#   launch/local.sh configs/default.py /tmp/pclip [--config.train.batch_size=2048 ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}; workdir=${2:?workdir}; shift 2
exec python3 -m pclip_jax.main --config "$config" --workdir "$workdir" "$@"
