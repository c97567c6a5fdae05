"""PacketCLIP in JAX/Flax: contrastive packet/text towers, mission knowledge graphs and a hierarchical GNN for
encrypted-traffic classification.

Packages by layer, lowest first; a module imports only from its own layer or the ones below
(`tests/test_architecture.py` checks every module): `plumbing` → `graph` → `data` → `models` → `text` →
`training` → `serving` → the entry points (`job`, `main`, `ingest`, `evaluate`, `classify`, `export`, `configs`,
`kg`). Map of the modules: docs/architecture.md.
"""
__version__ = "0.2.0"
