"""Everything about the package is in setup.cfg; this file only adds the optional compiled capture reader.

``optional=True``: without a C compiler the build goes on and ingest uses the same steps in Python/numpy (slower).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pclip_jax.data._capture_c", ["pclip_jax/data/_capture_c.c"], optional=True)])
