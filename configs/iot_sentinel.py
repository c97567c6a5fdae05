"""IoT Sentinel on a CPU: device identification from setup traffic (31 devices, ../shared/data/iot_sentinel).

The config lives in the package (pclip_jax/configs/iot_sentinel.py) so an installed pclip_jax has it too; this file keeps
`--config configs/iot_sentinel.py` working in a checkout.
"""
from pclip_jax.configs.iot_sentinel import get_config  # noqa: F401
