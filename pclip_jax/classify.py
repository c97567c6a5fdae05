"""`python -m pclip_jax.classify`: classify captures with a trained workdir or an export.

The command users call; the work is `pclip_jax.serving.classify` (this module only keeps the path).
"""
import sys

from pclip_jax.serving.classify import main

if __name__ == "__main__":
    sys.exit(main())
