"""Training and the stages that produce a workdir: the towers a config builds and runs (`towers`), their training
state (`state`), contrastive losses, the one training loop (`loop`), pre-training (`pretrain`), the detection stage
(`detection`: the knowledge graph in the shared space, GNN training via `train_gnn`, calibration), the flows of an
experiment (`experiment`) and restoring a trained workdir (`restore`). May import every layer below it
(`plumbing`, `graph`, `data`, `models`, `text`); nothing from `serving` or the entry points.
"""
