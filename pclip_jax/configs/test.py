"""Tiny config for tests on CPU: a handful of captures, a few steps."""
from pclip_jax.configs import default


def get_config():
    config = default.get_config()
    config.data.packets = 4
    config.data.bytes = 32
    config.data.min_class_flows = 3
    config.model.width = 16
    config.model.depth = 1
    config.model.heads = 2
    config.model.byte_dim = 4
    config.model.dropout = 0.0
    config.model.embed_dim = 16
    config.text.encoder = "../shared/models/all-MiniLM-L6-v2"
    config.text.max_len = 32
    config.text.variants_per_flow = 2
    config.train.batch_size = 16
    config.train.num_steps = 4
    config.train.warmup_steps = 1
    config.train.dtype = "float32"
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    config.train.eval_every = 2
    config.eval.batch_size = 32
    config.gnn.batch_size = 16
    config.gnn.num_steps = 4
    config.gnn.warmup_steps = 1
    config.gnn.log_every = 2
    config.gnn.model.hidden = 16
    config.gnn.model.num_heads = 2
    return config
