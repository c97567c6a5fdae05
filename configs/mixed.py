"""A mixed corpus: IoT Sentinel, nDPI, zeek and suricata-verify captures pre-trained as one corpus.

The config lives in the package (pclip_jax/configs/mixed.py) so an installed pclip_jax has it too; this file keeps
`--config configs/mixed.py` working in a checkout.
"""
from pclip_jax.configs.mixed import get_config  # noqa: F401
