"""`python -m pclip_jax.export`: export a trained workdir for deployment (ONNX, manifest, parity check).

The command users call; the work is `pclip_jax.serving.export` (this module only keeps the path).
"""
import sys

from pclip_jax.serving.export import main

if __name__ == "__main__":
    sys.exit(main())
