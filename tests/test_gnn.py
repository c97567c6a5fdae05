"""Hierarchical GNN: fixed-shape padding (one trace), per-level losses, consistency, training, explanations."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.data.labels import attach_labels
from pclip_jax.models import graph_tuples as G
from pclip_jax.serving.explain import explain_flows, explanation_text
from pclip_jax.plumbing.runtime import count_params
from pclip_jax.models.gnn import GnnConfig, HierarchicalGNN, flops_per_flow, gnn_loss, init_params, predict
from pclip_jax.graph.missions import Mission, parse_mission
from pclip_jax.graph.schema import load_kg, shipped_kg_path
from pclip_jax.training.train_gnn import GnnTrainConfig, evaluate_gnn, prepare_kg, train_gnn
from pclip_jax.text.feature_cache import TextFeaturizer

CAPTURES = ["openvpn.pcap", "ssh.pcap", "rdp.pcap", "KakaoTalk_chat.pcap", "netflix.pcap", "wireguard.pcap",
            "teams.pcap", "dnscrypt.pcap"]
SMALL = GnnConfig(hidden=32, num_layers=2, num_heads=2, dropout=0.0, factored=False)  # the per-flow formulation
FACTORED = GnnConfig(hidden=32, num_layers=2, num_heads=2, dropout=0.0, factored=True)


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    f = TextFeaturizer(str(minilm_dir), max_len=48, batch_size=64)
    return lambda texts: f(texts, progress=False)


# The classes of the test captures (a mission subgraph of the shipped nDPI graph keeps the tests fast on 2 cores).
TEST_CLASSES = ("VPN/Tunnel", "RemoteAccess", "Chat", "Streaming", "Collaboration", "Infrastructure", "Web")


@pytest.fixture(scope="module")
def full_kg(encoder, tmp_path_factory):
    return prepare_kg(load_kg(shipped_kg_path("ndpi")), encoder, tmp_path_factory.mktemp("kgcache"), "minilm")


@pytest.fixture(scope="module")
def prepared(encoder):
    return prepare_kg(load_kg(shipped_kg_path("ndpi")), encoder,
                      mission=Mission("test", "test captures", focus=TEST_CLASSES, keep_others=False))


@pytest.fixture(scope="module")
def flows(ndpi_dir, prepared):
    """Flows of a few captures with nDPI labels; features = standardised log flow statistics."""
    paths = [str(ndpi_dir / "pcap" / c) for c in CAPTURES if (ndpi_dir / "pcap" / c).is_file()]
    table = attach_labels(ingest(paths, IngestConfig(), progress=False), f"ndpi:{ndpi_dir}", progress=False)
    x = np.log1p(np.abs(table.tensors["stats"].astype(np.float64)))
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    y1, y2, _ = G.labels_to_slots(prepared.layout, table.meta["level1"], table.meta["level2"])
    keep = y1 >= 0
    assert keep.sum() >= 40, "expected labelled flows in the test captures"
    return x[keep], y1[keep], y2[keep]


def _predict(layout, cfg=SMALL):
    model = HierarchicalGNN(cfg)
    return jax.jit(lambda p, g, t: {k: v for k, v in predict(model, p, g, t, layout).items() if k != "outputs"})


def _loss(layout, cfg=SMALL):
    model = HierarchicalGNN(cfg)
    return jax.jit(lambda p, g, t: gnn_loss(model.apply({"params": p}, g, t), g, layout))


def _params(prepared, dim, cfg=SMALL, seed=0):
    sample = G.build_batch(prepared.layout, np.zeros((1, dim), np.float32))
    return init_params(cfg, jax.random.PRNGKey(seed), sample, prepared.embeddings)


def test_one_trace_across_batch_sizes_and_padding_is_masked(prepared, flows):
    x, y1, y2 = flows
    model = HierarchicalGNN(SMALL)
    params = _params(prepared, x.shape[1])
    budget = G.padding_budget(prepared.layout, 24)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, graphs, table):
        out = model.apply({"params": p}, graphs, table)
        return gnn_loss(out, graphs, prepared.layout)

    table = jnp.asarray(prepared.embeddings)
    losses = {}
    for n in (24, 7, 1, 13):
        batch = G.build_batch(prepared.layout, x[:n], y1[:n], y2[:n], budget)
        assert batch.n_node.shape == (25,) and batch.nodes["kg_index"].shape == (budget.n_node,)
        losses[n] = step(params, batch, table)
    # The same 7 flows without spare padding give the same loss: padding graphs never count.
    tight = G.build_batch(prepared.layout, x[:7], y1[:7], y2[:7])
    loss, metrics = _loss(prepared.layout)(params, tight, table)
    np.testing.assert_allclose(loss, losses[7][0], rtol=1e-5)
    assert int(metrics["count_level1"]) == 7 and int(losses[7][1]["count_level1"]) == 7
    assert int(losses[7][1]["count_level2"]) == int((y2[:7] >= 0).sum())


@pytest.mark.parametrize("cfg", [SMALL, FACTORED], ids=["per_flow", "factored"])
def test_levels_are_consistent(prepared, flows, cfg):
    x = flows[0]
    lay = prepared.layout
    params = _params(prepared, x.shape[1], seed=3)
    res = jax.device_get(_predict(lay, cfg)(params, G.build_batch(lay, x[:16]), prepared.embeddings))
    p1, p2, c2 = res["prob1"][:16], res["prob2"][:16], res["cond2"][:16]
    np.testing.assert_allclose(p1.sum(1), 1.0, rtol=1e-5)
    parent = lay.level2_parent_slot
    # A child never has more probability than its parent; a class's children share exactly its mass.
    assert (p2 <= p1[:, parent] + 1e-6).all()
    np.testing.assert_allclose(p2, p1[:, parent] * c2, rtol=1e-4, atol=1e-7)
    for c in np.unique(parent):
        np.testing.assert_allclose(p2[:, parent == c].sum(1), p1[:, c], rtol=1e-4, atol=1e-6)
    # Top-down decisions: the chosen application is a child of the chosen class.
    pred1, pred2 = res["pred1"][:16], res["pred2"][:16]
    has_children = np.isin(pred1, parent)
    assert (pred2[~has_children] == -1).all()
    assert (parent[pred2[has_children]] == pred1[has_children]).all()
    assert not res["mask"][16:].any() and res["mask"][:16].all()


def test_per_level_losses(prepared, flows):
    x, y1, y2 = flows
    lay = prepared.layout
    params = _params(prepared, x.shape[1])
    n = 12
    loss_fn = _loss(lay)
    res = _predict(lay)(params, G.build_batch(lay, x[:n]), prepared.embeddings)
    _, m = loss_fn(params, G.build_batch(lay, x[:n], y1[:n], y2[:n]), prepared.embeddings)
    want1 = -np.log(np.asarray(res["prob1"])[np.arange(n), y1[:n]]).mean()
    known = y2[:n] >= 0
    want2 = -np.log(np.asarray(res["cond2"])[np.arange(n)[known], y2[:n][known]]).mean()
    np.testing.assert_allclose(m["loss_level1"], want1, rtol=1e-4)
    np.testing.assert_allclose(m["loss_level2"], want2, rtol=1e-4)
    # With no level-2 labels, the level-2 loss is zero and does not count.
    _, m0 = loss_fn(params, G.build_batch(lay, x[:n], y1[:n], np.full(n, -1)), prepared.embeddings)
    assert float(m0["loss_level2"]) == 0.0 and int(m0["count_level2"]) == 0


def test_tiny_budget_params_and_flops(full_kg):
    # Default config at the packet tower's projected width (256) on the whole shipped nDPI graph: shapes only,
    # seeded inputs.
    x = np.random.default_rng(0).normal(size=(32, 256)).astype(np.float32)
    params = _params(full_kg, 256, GnnConfig())
    n_params = count_params(params)
    flops = flops_per_flow(GnnConfig(), params, G.build_batch(full_kg.layout, x), full_kg.embeddings)
    assert 50_000 < n_params <= 1_100_000
    assert 0 < flops <= 5e6, flops        # the default (factored) detection stage: <= 5 MFLOPs per flow


def test_train_gnn_learns_flows_and_explains(prepared, flows, tmp_path):
    x, y1, y2 = flows
    cfg = GnnTrainConfig(model=SMALL, batch_size=32, num_steps=20, learning_rate=1e-2, log_every=5,
                         warmup_steps=5)
    params, history = train_gnn(cfg, x, y1, y2, prepared, tmp_path, progress=False)
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    assert history[-1]["loss_level1"] < history[0]["loss_level1"]
    assert (tmp_path / "metrics_gnn.jsonl").is_file()
    # Resume: a finished run restores its checkpoint and returns the same parameters without training.
    again, hist2 = train_gnn(cfg, x, y1, y2, prepared, tmp_path, progress=False)
    assert hist2 == []
    chex.assert_trees_all_close(params, again)

    res = evaluate_gnn(cfg, params, x, y1, y2, prepared, min_flows_level2=3, measure_flops=False)
    assert res["trainable_params"] == count_params(params)
    for lvl in ("level1", "level2"):
        assert {"mauc", "accuracy", "macro_f1", "per_class_auc"} <= set(res[lvl])
    assert res["level1"]["accuracy"] > 0.5      # training flows: the head must fit them
    # Both levels right, over the flows of a known application: at most the level-2 accuracy on the same flows
    # (level 1's top-down accuracy counts every flow of a known class, so it may be lower).
    assert 0 <= res["hierarchical_accuracy"] <= res["level2"]["accuracy"] + 1e-9

    expl = explain_flows(SMALL, params, prepared, x[:3], flow_facts=["fact a", "fact b", "fact c"])
    res_p = _predict(prepared.layout)(params, G.build_batch(prepared.layout, x[:3]), prepared.embeddings)
    for i, e in enumerate(expl):
        step1 = e["path"][0]
        assert step1["id"] == prepared.layout.class_names(1)[int(res_p["pred1"][i])]
        np.testing.assert_allclose(step1["probability"], float(res_p["prob1"][i].max()), rtol=1e-5)
        node = prepared.kg.node(step1["id"])
        assert step1["winning_description"] in node.descriptions
        assert len(step1["attention"]) == SMALL.num_layers and all(0 <= a <= 1 for a in step1["attention"])
        if e["level2"] is not None:
            assert prepared.kg.node(e["path"][1]["id"]).parent == step1["id"]
            assert e["path"][1]["probability"] <= step1["probability"] + 1e-6
        assert e["flow_facts"] == f"fact {'abc'[i]}"
        assert step1["name"] in explanation_text(e)


def test_zero_shot_class_from_text_only(prepared, encoder, flows):
    """A class added by a mission, never seen in training, gets a probability through its description."""
    raw = {"statement": "find onion routing", "focus": ["VPN/Tunnel"], "weights": {"VPN/Tunnel": 3.0},
           "extra_nodes": [{"id": "I2P", "level": 2, "parent": "VPN/Tunnel", "name": "I2P",
                            "descriptions": ["I2P garlic routing between peers over UDP and TCP"]}]}
    mission_kg = prepare_kg(prepared.kg, encoder, mission=parse_mission("onion", raw))
    x = flows[0][:4]
    params = _params(prepared, x.shape[1])   # same parameters: no per-class weights
    fn = _predict(mission_kg.layout)
    res = fn(params, G.build_batch(mission_kg.layout, x, node_prior=mission_kg.prior), mission_kg.embeddings)
    slot = mission_kg.layout.slot(2, "I2P")
    p = np.asarray(res["prob2"])[:4, slot]
    assert (p > 0).all() and (p < 1).all()
    # The mission's weight raises the focus class's probability compared with no mission.
    base = fn(params, G.build_batch(mission_kg.layout, x), mission_kg.embeddings)
    vpn = mission_kg.layout.slot(1, "VPN/Tunnel")
    assert (np.asarray(res["prob1"])[:4, vpn] > np.asarray(base["prob1"])[:4, vpn]).all()


def test_pmap_batches_stack_per_device(prepared, flows):
    x, y1, y2 = flows
    batches = list(G.device_batches(prepared.layout, x[:20], y1[:20], y2[:20], num_devices=4, per_device_batch=3))
    assert len(batches) == 2
    first = batches[0]
    assert first.n_node.shape == (4, 4) and first.globals["flow"].shape == (4, 4, x.shape[1])
    # Second step: 8 flows on 4 devices of 3 → the last device holds only padding, every label -1.
    assert (batches[1].globals["level1"][3] == -1).all()
    assert batches[0].nodes["kg_index"].shape == batches[1].nodes["kg_index"].shape


def test_node_prompts_pull_class_nodes_to_the_zero_shot_prompts(encoder):
    """With gnn.node_prompts, a level-1 node's text embedding moves towards the mean of the zero-shot prompts of
    its class (what the towers were aligned on); nodes without phrasings and the explanation slots are untouched."""
    from pclip_jax.text import prompts as text_lib
    from pclip_jax.training.detection import blend_pretraining_prompts
    from pclip_jax.plumbing.settings import Settings

    kg = load_kg(shipped_kg_path("ndpi"))
    plain = prepare_kg(kg, encoder)
    unblended = prepare_kg(kg, encoder)
    blended = blend_pretraining_prompts(unblended, Settings(), encoder)  # node_prompts is on by default
    np.testing.assert_array_equal(unblended.embeddings, plain.embeddings)  # a new PreparedKG, the input unchanged
    descriptions = text_lib.load_class_descriptions()
    moved = 0
    for m, node in enumerate(kg.nodes):
        if node.level != 1:
            continue
        p = np.asarray(encoder(text_lib.class_prompts(node.id, descriptions)), np.float32)
        target = (p / np.linalg.norm(p, axis=1, keepdims=True)).mean(0)
        assert blended.embeddings[m] @ target > plain.embeddings[m] @ target
        moved += 1
    assert moved >= 10
    np.testing.assert_array_equal(blended.text["descriptions"], plain.text["descriptions"])
    root = kg.index(kg.root.id)
    np.testing.assert_array_equal(blended.embeddings[root], plain.embeddings[root])


def test_factored_formulation_costs_a_fraction_per_flow_and_reads_the_graph_the_same_way(full_kg, prepared, flows,
                                                                                        tmp_path):
    """The factored GNN (graph message passing once per call): same parameters, the flow's first-layer attention
    equal to the per-flow formulation's (both read the same node states there), ≤ 5 MFLOPs per flow on the whole
    nDPI graph from the compiled program, and it trains and explains."""
    import dataclasses

    x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
    full_cfg = GnnConfig(factored=False)
    factored_cfg = dataclasses.replace(full_cfg, factored=True)
    params = _params(full_kg, 256, full_cfg)
    graphs = G.build_batch(full_kg.layout, x)
    assert count_params(params) == count_params(_params(full_kg, 256, factored_cfg))
    per_flow = flops_per_flow(full_cfg, params, graphs, full_kg.embeddings)
    factored = flops_per_flow(factored_cfg, params, graphs, full_kg.embeddings)
    assert factored <= 5e6 and factored < per_flow / 10, (factored, per_flow)

    lay = prepared.layout
    xs, y1, y2 = flows
    small = _params(prepared, xs.shape[1])
    batch = G.build_batch(lay, xs[:8])
    out_full = HierarchicalGNN(SMALL).apply({"params": small}, batch, prepared.embeddings)
    out_fact = HierarchicalGNN(FACTORED).apply({"params": small}, batch, prepared.embeddings)
    edges = (np.arange(8)[:, None] * lay.edges_per_graph + lay.node_to_flow_edge[None, :]).reshape(-1)
    np.testing.assert_allclose(np.asarray(out_fact["attention"][0])[edges], np.asarray(out_full["attention"][0])[edges],
                               rtol=1e-4, atol=1e-6)

    cfg = GnnTrainConfig(model=FACTORED, batch_size=32, num_steps=20, learning_rate=1e-2, log_every=5, warmup_steps=5)
    trained, history = train_gnn(cfg, xs, y1, y2, prepared, tmp_path, progress=False)
    assert history[-1]["loss_level1"] < history[0]["loss_level1"]
    expl = explain_flows(FACTORED, trained, prepared, xs[:2], flow_facts=["a", "b"])
    assert all(len(e["path"][0]["attention"]) == 2 and 0 < e["path"][0]["attention"][0] <= 1 for e in expl)


def test_dense_factored_forward_equals_the_module_on_graphs(prepared, flows):
    """`dense_forward` (what classify and the ONNX export run: no per-flow graphs, the graph side computed once)
    gives the factored module's per-level log-probabilities, node scores and attention on `build_batch` graphs,
    under a mission prior; the description-slot stack of `dense_detection` scores each slot as one pass would."""
    from pclip_jax.serving.explain import dense_detection, slot_tables
    from pclip_jax.models.gnn import dense_forward, dense_structure, per_level_outputs

    xs, _, _ = flows
    lay = prepared.layout
    prior = np.where(np.isin(np.arange(lay.num_kg_nodes), lay.level_nodes[1][:2]), np.log(2.0), 0.0)
    params = _params(prepared, xs.shape[1], FACTORED, seed=3)
    # Trained-looking parameters (the zero-initialised score query would hide the learned term).
    params = jax.tree.map(lambda a: a + 0.1 * np.random.default_rng(1).normal(size=a.shape).astype(np.float32),
                          params)
    x = xs[:9]
    graphs = G.build_batch(lay, x, node_prior=prior.astype(np.float32))
    out = HierarchicalGNN(FACTORED).apply({"params": params}, graphs, prepared.embeddings)
    ref = per_level_outputs(out, lay)
    structure = dense_structure(lay, prior)
    dense = dense_forward(FACTORED, params, x, prepared.embeddings, structure)
    for key in ("logp1", "logp2", "cond2"):
        np.testing.assert_allclose(np.asarray(dense[key]), np.asarray(ref[key])[:9], atol=2e-5, err_msg=key)
    nodes = np.arange(9)[:, None] * lay.nodes_per_graph + 1 + np.arange(lay.num_kg_nodes)[None, :]
    edges = np.arange(9)[:, None] * lay.edges_per_graph + lay.node_to_flow_edge[None, :]
    np.testing.assert_allclose(np.asarray(dense["score"]), np.asarray(out["score"])[nodes], atol=2e-5)
    for a_dense, a_graph in zip(dense["attention"], out["attention"]):
        np.testing.assert_allclose(np.asarray(a_dense), np.asarray(a_graph)[edges], atol=1e-6)
    assert np.abs(np.asarray(dense["logp1"]) - np.asarray(dense_forward(FACTORED, params, x, prepared.embeddings,
                                                                         dense_structure(lay))["logp1"])).max() > 1e-3

    arrays = dense_detection(FACTORED, params, dataclasses.replace(prepared, prior=prior.astype(np.float32)))(x)
    np.testing.assert_allclose(np.asarray(arrays["prob1"]), np.exp(np.asarray(ref["logp1"])[:9]), atol=2e-5)
    slots = slot_tables(prepared)
    for d in range(slots.shape[0]):
        np.testing.assert_allclose(np.asarray(arrays["slot_scores"])[:, d],
                                   np.asarray(dense_forward(FACTORED, params, x, slots[d], structure)["score"]),
                                   atol=2e-5)


def test_extra_flow_features_enter_through_their_own_layer(prepared, flows):
    """`flow_features=F`: the last F columns of the flow input (raw sizes and timing in
    benchmarks/detection_inputs.py) reach the flow node through `features_in`, not the similarity term; the dense
    path (classify, ONNX) gives the module's outputs, and changing only those columns changes the decision scores."""
    from pclip_jax.models.gnn import dense_forward, dense_structure, per_level_outputs

    xs, _, _ = flows
    lay = prepared.layout
    cfg = dataclasses.replace(FACTORED, flow_features=3)
    extra = np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)
    x = np.concatenate([xs[:9], extra], 1)
    params = _params(prepared, x.shape[1], cfg, seed=3)
    assert params["features_in"]["kernel"].shape == (3, cfg.hidden)
    assert params["flow_in"]["kernel"].shape == (xs.shape[1], cfg.hidden)
    params = jax.tree.map(lambda a: a + 0.1 * np.random.default_rng(1).normal(size=a.shape).astype(np.float32),
                          params)
    out = per_level_outputs(HierarchicalGNN(cfg).apply({"params": params}, G.build_batch(lay, x),
                                                       prepared.embeddings), lay)
    dense = dense_forward(cfg, params, x, prepared.embeddings, dense_structure(lay))
    np.testing.assert_allclose(np.asarray(dense["logp1"]), np.asarray(out["logp1"])[:9], atol=2e-5)
    moved = dense_forward(cfg, params, np.concatenate([xs[:9], extra + 1.0], 1), prepared.embeddings,
                          dense_structure(lay))
    assert np.abs(np.asarray(moved["logp1"]) - np.asarray(dense["logp1"])).max() > 1e-3


def test_gnn_checkpoints_resume_only_under_their_own_settings(prepared, flows, tmp_path, capsys):
    """A rerun with the same settings resumes (nothing retrained); one with another formulation (same parameter
    shapes) moves the old checkpoints aside and trains again instead of reusing them."""
    x, y1, y2 = flows
    cfg = GnnTrainConfig(model=SMALL, batch_size=32, num_steps=4, learning_rate=1e-2, log_every=2, warmup_steps=1)
    first, history = train_gnn(cfg, x, y1, y2, prepared, tmp_path, progress=False)
    assert [h["step"] for h in history] == [2, 4]
    again, history = train_gnn(cfg, x, y1, y2, prepared, tmp_path, progress=False)
    assert history == [] or all(h["step"] > 4 for h in history)
    chex.assert_trees_all_close(first, again)
    assert not (tmp_path / "previous-1").exists()
    other = dataclasses.replace(cfg, model=FACTORED)
    _, history = train_gnn(other, x, y1, y2, prepared, tmp_path, progress=False)
    assert [h["step"] for h in history] == [2, 4]
    assert (tmp_path / "previous-1" / "gnn_checkpoints").is_dir()
    assert "other settings: model" in capsys.readouterr().err
