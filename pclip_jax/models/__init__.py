"""The networks as Flax modules and their inputs: packet tower, BERT text tower (and its loader), the two towers
with projections and temperature, the hierarchical GNN (`gnn`) and the graph tuples it runs on (`graph_tuples`).
No training, no data loading. May import `plumbing`, `graph` and `data` (it needs none of `data` today).
"""
