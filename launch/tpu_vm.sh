#!/usr/bin/env bash
# Cloud TPU VM (v4/v5e pod slice): install and start the same command on all workers.
#   launch/tpu_vm.sh TPU_NAME ZONE configs/default.py gs://bucket/pclip [overrides...]
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides...]}; zone=${2:?zone}
config=${3:?config}; workdir=${4:?workdir}; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd pclip_jax && pip install -q -e . 'jax[tpu]' &&
  PCLIP_AUTODETECT=1 PCLIP_DISTRIBUTED=1 launch/multihost.sh $config $workdir $*"
