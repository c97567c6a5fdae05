"""Job configs that several tests build (tests/test_taxonomy.py, tests/test_split_checks.py)."""


def folder_job_config(inputs, minilm_dir):
    """configs/folder.py at the tiny sizes of configs/test.py (4 packets of 32 bytes, 2 steps of each stage) on
    `inputs` (folders of class folders, or `PATH=LABELS` sources), with the text encoder at minilm_dir."""
    from configs import folder as folder_config
    from configs import test as test_config

    config = folder_config.get_config()
    tiny = test_config.get_config()
    for section in ("model", "train", "eval", "gnn"):  # the tiny sizes of the test config
        for key, value in tiny[section].items():
            if key not in ("kg", "mission"):
                config[section][key] = value
    config.data.packets, config.data.bytes, config.data.min_class_flows = 4, 32, 3
    config.data.inputs = tuple(str(i) for i in inputs)
    config.text.encoder, config.text.max_len, config.text.variants_per_flow = str(minilm_dir), 32, 1
    config.train.num_steps = config.gnn.num_steps = 2
    return config
