"""Tiny config for tests on CPU: a handful of captures, a few steps.

The config lives in the package (pclip_jax/configs/test.py) so an installed pclip_jax has it too; this file keeps
`--config configs/test.py` working in a checkout.
"""
from pclip_jax.configs.test import get_config  # noqa: F401
