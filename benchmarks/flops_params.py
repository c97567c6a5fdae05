"""Parameters and FLOPs per flow of every stage, against ET-BERT-base, from the compiled programs.

    python benchmarks/flops_params.py [--config configs/default.py] [--json OUT]

The peers (pclip_bench/peers/models.py) at their published sizes are measured the same way; their trained (CPU)
sizes are in the peer suite's rows (benchmarks/peers.py).

FLOPs come from XLA's cost analysis of the compiled forward pass (a multiply-add counts as 2 FLOPs), divided by
the batch size. ET-BERT-base is measured the same way: a BERT-base encoder (12 layers, width 768, 12 heads, its
60,005-token vocabulary) on one 128-token input, built with this project's BERT module. Parameters come from
`jax.eval_shape` (nothing is allocated). The text tower is not part of per-flow inference: class and node
descriptions are embedded once and cached.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from pclip_bench.costs import bert_cost, gnn_cost, packet_tower_cost, peer_cost, two_tower_heads_cost  # noqa: E402

ETBERT_SEQ = 128
ETBERT_PUBLISHED_PARAMS = 110e6  # BERT-base as usually quoted; the measured model adds ET-BERT's 60k-token vocabulary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.py"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from pclip_jax.plumbing.config_files import load_config
    from pclip_jax.plumbing.settings import from_config

    config = from_config(load_config(args.config))

    from pclip_jax.models.bert import BertConfig

    packet = packet_tower_cost(config)
    heads = two_tower_heads_cost(config)
    gnn = gnn_cost(config)
    minilm = bert_cost(BertConfig(), config.text.max_len)
    etbert = bert_cost(BertConfig(vocab_size=60005, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072), ETBERT_SEQ)
    peers = {name: peer_cost(name, "published") for name in ("etbert", "yatc", "netmamba", "cnn1d", "fsnet")}
    inference = packet["flops_per_flow"] + gnn["flops_per_flow"]
    report = {
        "config": args.config,
        "packet_tower": packet,
        "pretraining_trainable_params": heads["params"],
        "text_tower_minilm": minilm,
        "gnn": gnn,
        "etbert_base": etbert,
        "detection_trainable_params": gnn["params"],
        "detection_params_ratio_to_etbert": gnn["params"] / etbert["params"],
        "detection_params_ratio_to_etbert_published": gnn["params"] / ETBERT_PUBLISHED_PARAMS,
        "inference_flops_per_flow": inference,
        "inference_flops_ratio_to_etbert": inference / etbert["flops_per_input"],
        "peers_published": peers,
    }
    rows = [
        ("packet tower", packet["params"], packet["flops_per_flow"]),
        ("GNN head (" + gnn["kg"] + f", {gnn['kg_nodes']} nodes)", gnn["params"], gnn["flops_per_flow"]),
        ("inference per flow (tower+GNN)", packet["params"] + gnn["params"], inference),
        (f"text tower MiniLM ({minilm['seq_len']} tok, cached)", minilm["params"], minilm["flops_per_input"]),
        (f"ET-BERT-base ({ETBERT_SEQ} tokens)", etbert["params"], etbert["flops_per_input"]),
    ] + [(f"peer {name} (published size, classifier)", c["params"], c["flops_per_flow"])
         for name, c in peers.items()]
    print(f"{'model':<44}{'params':>14}{'MFLOPs/flow':>14}")
    for name, p, f in rows:
        print(f"{name:<44}{p:>14,d}{f / 1e6:>14.1f}")
    print(f"detection-stage trainable params / ET-BERT-base: {report['detection_params_ratio_to_etbert']:.4%} "
          f"({1 - report['detection_params_ratio_to_etbert']:.2%} fewer)")
    print(f"detection-stage trainable params / ET-BERT-base as published (~110M): "
          f"{gnn['params'] / ETBERT_PUBLISHED_PARAMS:.4%}")
    print(f"inference FLOPs per flow / ET-BERT-base:         {report['inference_flops_ratio_to_etbert']:.4%} "
          f"({1 - report['inference_flops_ratio_to_etbert']:.2%} fewer)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
