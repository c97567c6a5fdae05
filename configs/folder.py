"""Any folder of captures, one sub-folder per class: `--config.data.inputs="('DIR',)"`, nothing else needed.

The config lives in the package (pclip_jax/configs/folder.py) so an installed pclip_jax has it too; this file keeps
`--config configs/folder.py` working in a checkout.
"""
from pclip_jax.configs.folder import get_config  # noqa: F401
