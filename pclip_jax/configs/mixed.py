"""A mixed corpus: IoT Sentinel devices, the nDPI corpus and the unlabelled zeek and suricata-verify test captures
(labelled by nDPI through nfstream, `--labels dpi`) pre-trained as one corpus.

Each `data.inputs` entry "PATH=LABELS" is a source with its own label spec; the split is by capture within each
source and `results.json` → `by_source` evaluates each source among its own classes (the GNN on the mission graph
`iot_sentinel`, so at device type / device level). Classes come from each source's own taxonomy
(`data.taxonomy = "auto"`: the label hierarchy for nDPI-labelled traffic, the graph for the devices). The question it
answers: does more, varied traffic in pre-training help the devices (docs/model.md, "Mixed corpus")?
Needs `pip install -e ".[dpi]"` for the DPI labels.
"""
from pclip_jax.configs import iot_sentinel


def get_config():
    config = iot_sentinel.get_config()
    config.data.inputs = ("../shared/data/iot_sentinel=folder",
                          "../shared/data/ndpi/pcap=ndpi:../shared/data/ndpi/result",
                          "../shared/data/zeek=dpi",
                          "../shared/data/suricata-verify=dpi")
    config.data.taxonomy = "auto"
    return config
