"""Entry-point paths kept from before the layered layout: `python -m pclip_jax.kg.generate` (now
`pclip_jax.graph.generate`). The knowledge graph lives in `pclip_jax.graph` (schema, missions, shipped graphs), the
GNN in `pclip_jax.models.gnn`, its training in `pclip_jax.training`, explanations in `pclip_jax.serving.explain`.
Top layer: imports what it calls; nothing in the library imports it.
"""
