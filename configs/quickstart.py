"""The one-command main job on a CPU: ingest (cached) → pre-training → evaluation in ≤ 10 minutes on 2 cores.

The config lives in the package (pclip_jax/configs/quickstart.py) so an installed pclip_jax has it too; this file keeps
`--config configs/quickstart.py` working in a checkout.
"""
from pclip_jax.configs.quickstart import get_config  # noqa: F401
