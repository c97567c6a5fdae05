"""Captures to flows and everything about the flows before a model sees them: capture reading, flow assembly,
tensors and masking, the flow table (`flow_table.FlowTable`, the contract every later stage reads), ingest, labels,
taxonomy, splits, TFDS builders and the flows a job trains on (`prepare`, `flow_source`: numpy batches for the
training loop). No JAX. May import `plumbing` and `graph`.
"""
