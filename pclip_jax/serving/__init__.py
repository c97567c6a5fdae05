"""Using a trained workdir: classifying captures with explanations (`classify`), exporting to ONNX (`export`),
explanations of a detection (`explain`) and running an export with onnxruntime without JAX (`onnx_runtime`). May
import every layer below it; the entry points on top (`pclip_jax.classify`, `pclip_jax.export`) only keep the
command paths.
"""
