"""Any folder of captures, one sub-folder per class: `--config.data.inputs="('DIR',)"`, nothing else needed.

The class of a capture is its folder's name; the knowledge graph is built from those labels (written to
WORKDIR/kg.yaml, editable), and its descriptions are the classes' texts for pre-training and zero-shot.
"""
from pclip_jax.configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.data.manual_dir = ""
    config.data.inputs = ()
    config.data.labels = "folder"
    config.data.taxonomy = "auto"
    config.text.graph_descriptions = True
    config.gnn.kg = ""
    return config
