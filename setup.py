"""Everything about the package is in setup.cfg; this file only adds the optional compiled record walk.

``optional=True``: without a C compiler the build goes on and ingest uses the same loop in Python (slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pclip_jax.data._pcapwalk", ["pclip_jax/data/_pcapwalk.c"], optional=True)])
