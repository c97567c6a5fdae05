"""The knowledge graph as data: its schema and validation (`schema`), missions (`missions`), drafting one with an
LLM (`generate`), building one from labels (`from_labels`) and the graphs shipped with the package (`shipped/`).
No JAX. May import `plumbing` only.
"""
