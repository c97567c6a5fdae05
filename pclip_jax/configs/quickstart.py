"""The one-command main job on a CPU: ingest (cached) → pre-training → evaluation in ≤ 10 minutes on 2 cores."""
from pclip_jax.configs import default


def get_config():
    config = default.get_config()
    config.model.width = 128
    config.model.depth = 2
    config.model.heads = 4
    config.model.dropout = 0.1
    config.train.weight_decay = 0.05
    config.model.embed_dim = 128
    config.text.encoder = "../shared/models/all-MiniLM-L6-v2"
    config.train.batch_size = 256
    config.train.num_steps = 400
    config.train.warmup_steps = 50
    config.train.dtype = "float32"
    config.train.log_every = 25
    config.train.checkpoint_every = 200
    config.train.eval_every = 50
    config.eval.batch_size = 512
    return config
