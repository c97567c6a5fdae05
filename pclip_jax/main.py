"""Entry point: `python -m pclip_jax.main --config configs/quickstart.py --workdir /tmp/pclip`.

Flags only; the work is `pclip_jax.job.train_and_evaluate(config, workdir)`. Override any config field on the
command line, e.g. `--config.train.batch_size=512 --config.data.manual_dir=../shared/data/ndpi`. `--config` also
takes the name of a config shipped with the package (`default`, `quickstart`, `test`), so an installed pclip_jax
runs from any directory. A bad value, a missing file or an unknown field is one line naming it (exit status 1);
`--verbose` adds the traceback.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from pclip_jax.plumbing import errors
from pclip_jax import job
from pclip_jax.configs import SHIPPED, shipped_config_path

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py) or a shipped config name.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and results.json.")
flags.DEFINE_bool("verbose", False, "Full tracebacks on errors.")
flags.mark_flags_as_required(["config", "workdir"])


def resolve_config_argument(argv: Sequence[str]) -> list[str]:
    """`--config NAME` of a shipped config (not an existing file) → the packaged file's path."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = None, None
        if arg.startswith("--config="):
            value, prefix = arg[len("--config="):], "--config="
        elif arg == "--config" and i + 1 < len(out):
            value, prefix = out[i + 1], None
        if value is None:
            continue
        path, _, rest = value.partition(":")
        if not pathlib.Path(path).is_file() and path.removesuffix(".py") in SHIPPED:
            resolved = str(shipped_config_path(path.removesuffix(".py"))) + (":" + rest if rest else "")
            if prefix:
                out[i] = prefix + resolved
            else:
                out[i + 1] = resolved
    return out


def override_error(error: Exception) -> str:
    """ml_collections' error for an override (an AttributeError holding a quoted, escaped message) as one line."""
    text = str(error.args[0]) if error.args else str(error)
    text = text.replace("\\'", "'").replace("\\n", "\n").strip("'\" \n")
    field, _, hint = text.partition("\n")
    hint = hint.strip()
    overrides = [a.split("=")[0] for a in sys.argv if a.startswith("--config.")]
    if isinstance(error, (AttributeError, KeyError)):
        return (f"bad config override ({', '.join(overrides)}): no field {field.strip(chr(39))!r}"
                + (f" ({hint})" if hint else ""))
    return f"config override: {type(error).__name__}: {' '.join(text.split())}"


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's parsing, with a config override that names no field (or fails to load) as one line."""
    try:
        return FLAGS(list(argv))
    except Exception as e:  # flags.Error, or AttributeError/KeyError/TypeError from ml_collections for an override
        if "--verbose" in argv:
            raise
        message = errors.one_line(e) if isinstance(e, flags.Error) else override_error(e)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    with errors.cli_errors(FLAGS.verbose) as status:
        results = job.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        print(json.dumps({k: results[k] for k in ("devices", "num_params", "train_steps", "wall_seconds")}, indent=2))
    return status.code


if __name__ == "__main__":
    sys.exit(app.run(main, argv=resolve_config_argument(sys.argv), flags_parser=parse_flags))
