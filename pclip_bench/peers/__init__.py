"""Peers of PacketCLIP, re-implemented from their papers on the project's own flow tables (same masking, flows,
capture-disjoint splits and classes), for the benchmark suite `benchmarks/peers.py` (part of `pclip_bench`:
may import anything in `pclip_jax`, which never imports it):

* `models.py`: ET-BERT, YaTC, NetMamba, the 1D-CNN of Wang et al. (2017) and FS-Net as Flax modules, each at its
  published size (`published`) and a size that trains on a 2-core CPU (`cpu`);
* `inputs.py`: each peer's input view of a FlowTable (bigram tokens, byte images, stride tokens, byte strings,
  length sequences);
* `train.py`: their pre-training objectives (masked tokens, masked patches, sequence reconstruction) and
  supervised fine-tuning with model selection on the validation captures;
* `trees.py`: ExtraTrees and LightGBM on sizes, inter-arrival times, masked header bytes and the name vector;
* `suite.py`: the (dataset, model, fraction, seed) cells, one result file each (resumable, shardable), and the
  summary: tables, data-scarcity curves, mAUC against FLOPs, calibration, and the paper's four claims.
"""
