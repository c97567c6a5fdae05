"""Entry point: `python -m pclip_jax.main --config configs/quickstart.py --workdir /tmp/pclip`.

Flags only; the work is `pclip_jax.train.train_and_evaluate(config, workdir)`. Override any config field on the
command line, e.g. `--config.train.batch_size=512 --config.data.manual_dir=../shared/data/ndpi`.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    from pclip_jax import train

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps({k: results[k] for k in ("devices", "num_params", "train_steps", "wall_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
