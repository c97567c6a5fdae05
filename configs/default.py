"""Accelerator-sized pre-training on the nDPI corpus (one host, all its devices).

The config lives in the package (pclip_jax/configs/default.py) so an installed pclip_jax has it too; this file keeps
`--config configs/default.py` working in a checkout.
"""
from pclip_jax.configs.default import get_config  # noqa: F401
