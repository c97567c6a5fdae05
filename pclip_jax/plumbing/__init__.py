"""Plumbing used by every layer: typed settings (`settings`), the workdir's layout (`workdir`), atomic writes and
digests (`files`), one-line CLI errors (`errors`), the JAX runtime (`runtime`: devices, pmap or its shard_map form,
replicate/shard, compilation cache, FLOPs), orbax checkpoints (`checkpointing`), the metric writer, metrics (AUC,
mAUC, F1, ECE), config-file loading and the text encoder's file location. The lowest layer: imports no other
`pclip_jax` package (only `pclip_jax.__version__`).
"""
