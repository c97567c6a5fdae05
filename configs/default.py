"""Accelerator-sized pre-training on the nDPI corpus (one host, all its devices).

Data: the nDPI regression captures (download when online; offline `--config.data.manual_dir=DIR`).
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    config.data = ml_collections.ConfigDict()
    config.data.manual_dir = "../shared/data/ndpi"   # flat pcap/ + result/ or an unpacked nDPI source tree
    config.data.inputs = ()                          # explicit capture files/folders instead of manual_dir
    config.data.labels = ""                          # label spec; '' = ndpi:<manual_dir>/result
    config.data.cache_dir = ""                       # '' = <workdir>/cache
    # K=16 packets covers the handshake (SYN..ClientHello/ServerHello and the first records); B=128 bytes from the
    # IP header on covers IP+TCP headers with options and the first ~76 payload bytes: TLS record/handshake
    # headers, versions and session-id length, HTTP request lines, DNS/QUIC headers and names.
    config.data.packets = 16
    config.data.bytes = 128
    config.data.mask = True
    config.data.use_names = True                     # cleartext server names (SNI/Host/DNS) as a tower input
    config.data.payload_rows = False                 # True: rows from the first K packets with payload (docs/model.md)
    config.data.min_packets = 3
    config.data.drop_one_way = True
    config.data.label_level = "level1"
    config.data.min_class_flows = 20                 # evaluated classes need this many training flows
    config.data.test_fraction = 0.3
    # Captures carved out of train for model selection (best pre-training step, probe L2): never the test split.
    config.data.validation_fraction = 0.15
    config.data.split_seed = 0
    config.data.fraction = 1.0                       # <1: class-balanced subset of train (data-scarcity sweeps)

    config.model = ml_collections.ConfigDict()
    config.model.width = 192
    config.model.depth = 3
    config.model.heads = 6
    config.model.patch_size = 8
    config.model.pool_queries = 1
    config.model.byte_dim = 16
    config.model.mlp_ratio = 2
    config.model.dropout = 0.1
    config.model.embed_dim = 256
    config.model.name_dim = 384                      # server-name vector width = the text encoder's hidden size
    config.model.name_fusion = "both"                # the name as a token and added to the pooled output ("token": only the token)

    config.text = ml_collections.ConfigDict()
    config.text.encoder = "sentence-transformers/all-MiniLM-L6-v2"  # HF repo id or a local directory
    config.text.trainable = False                    # False: locked text tower (cached features); True: tuned
    config.text.from_scratch = False                 # True: a small text transformer trained from scratch
    config.text.descriptions = ""                    # '' = the shipped class descriptions
    config.text.max_len = 64
    config.text.batch_size = 128
    config.text.variants_per_flow = 4
    config.text.p_facts = 0.5

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 1024                   # global, split over all devices
    config.train.num_steps = 5000
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 200
    config.train.weight_decay = 1e-4
    config.train.grad_clip = 1.0
    config.train.loss = "clip"                       # 'clip' (softmax) or 'sigmoid' (SigLIP)
    config.train.multi_positive = True
    config.train.class_balance = 0.5
    config.train.augment = ml_collections.ConfigDict()
    config.train.augment.iat_scale = 1.0             # >1: log-uniform IAT scaling in [1/s, s]
    config.train.augment.byte_dropout = 0.0
    config.train.augment.packet_dropout = 0.0
    config.train.augment.name_dropout = 0.25         # hide a flow's server name (ECH, unseen handshakes)
    config.train.dtype = "bfloat16"
    config.train.seed = 0
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.train.eval_every = 250                    # validation zero-shot mAUC, keeps the best parameters
    config.train.keep_checkpoints = 3

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1024
    # Linear probe fitted per application and summed to classes ("class": one weight vector per class);
    # docs/model.md, "Evaluation".
    config.eval.probe_targets = "application"

    # Detection stage: hierarchical GNN over the mission knowledge graph, on the frozen towers.
    config.gnn = ml_collections.ConfigDict()
    config.gnn.node_prompts = True                   # node text = graph descriptions + pre-training prompts
    config.gnn.enabled = True
    config.gnn.kg = "ndpi"                            # a graph in configs/kg/ or a path to a YAML file
    config.gnn.mission = ""                           # a mission name from the graph, or a statement
    config.gnn.batch_size = 64
    config.gnn.num_steps = 300
    config.gnn.learning_rate = 3e-3
    config.gnn.weight_decay = 1e-4
    config.gnn.warmup_steps = 20
    config.gnn.log_every = 25
    config.gnn.checkpoint_every = 0
    config.gnn.min_flows_level2 = 5
    config.gnn.eval_every = 25                       # validation level-1 mAUC; the best step is kept (early stopping)
    config.gnn.fit_on = "train"                      # "train+validation": fit on both, no early stopping
    config.gnn.model = ml_collections.ConfigDict()
    config.gnn.model.hidden = 96
    config.gnn.model.num_layers = 2
    config.gnn.model.num_heads = 4
    config.gnn.model.dropout = 0.1
    return config
