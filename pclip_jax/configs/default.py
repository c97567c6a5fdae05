"""Accelerator-sized pre-training on the nDPI corpus (one host, all its devices).

Every field and its default is declared once, in `pclip_jax.plumbing.settings` (types, ranges and the reason for each
choice); this file turns them into an ml_collections config so any field can be overridden on the command line
(`--config.train.batch_size=512`). Data: the nDPI regression captures (`--config.data.manual_dir=DIR`).
"""
import ml_collections

from pclip_jax.plumbing import settings


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(settings.to_dict(settings.Settings()))
