"""The pmap-sharded contrastive losses equal the single-device loss on the concatenated batch (8 CPU devices)."""
import jax
import numpy as np
import pytest

from pclip_jax.training import losses
from pclip_jax.plumbing.runtime import count_params, replicate_local, tree_map
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.models.packet_tower import PacketTowerConfig
from pclip_jax.models.two_towers import TwoTowerConfig, TwoTowers

N_DEV = 8
PER_DEV = 4


@pytest.fixture(scope="module")
def flow_batch(ndpi_dir):
    """32 flows of captures (masked tensors) with class ids from their protocol, two padding rows at the end."""
    assert jax.local_device_count() == N_DEV, "conftest must set --xla_force_host_platform_device_count=8"
    table = ingest([ndpi_dir / "pcap" / "443-chrome.pcap", ndpi_dir / "pcap" / "1kxun.pcap",
                    ndpi_dir / "pcap" / "dns_long_domainname.pcap"], IngestConfig(packets=4, bytes=32),
                   progress=False)
    n = N_DEV * PER_DEV
    assert len(table) >= n
    t = table.tensors
    batch = {k: np.asarray(t[k][:n]) for k in ("bytes", "sizes", "iat", "tcp_flags")}
    batch["valid"] = np.ones(n, bool)
    batch["valid"][-2:] = False                       # padding rows
    batch["class_id"] = (np.asarray(table.meta["server_port"][:n]) % 3).astype(np.int32)
    batch["class_id"][5] = -1                          # an unknown class
    # Text side: a fixed random projection of the flow's own statistics, so texts are distinct per flow.
    stats = np.asarray(t["stats"][:n], np.float32)
    proj = np.random.default_rng(0).normal(size=(stats.shape[1], 12)).astype(np.float32)
    batch["text"] = np.tanh(np.log1p(np.abs(stats)) @ proj)
    return batch


def _model():
    return TwoTowers(TwoTowerConfig(packet=PacketTowerConfig(packets=4, bytes=32, patch_size=8, byte_dim=4, width=16,
                                                             depth=1, heads=2), embed_dim=8))


def _loss(model, params, batch, kind, axis_name):
    zp, zt, scale, bias = model.apply({"params": params}, batch, text_features=batch["text"])
    if kind == "clip":
        return losses.clip_loss(zp, zt, batch["valid"], batch["class_id"], scale, axis_name)[0]
    return losses.sigmoid_loss(zp, zt, batch["valid"], batch["class_id"], scale, bias, axis_name)[0]


@pytest.mark.parametrize("kind", ["clip", "sigmoid"])
def test_pmap_loss_and_grads_equal_single_device(flow_batch, kind):
    model = _model()
    params = model.init(jax.random.PRNGKey(0), flow_batch, text_features=flow_batch["text"])["params"]
    single_loss, single_grads = jax.value_and_grad(lambda p: _loss(model, p, flow_batch, kind, None))(params)

    def step(p, b):
        loss, grads = jax.value_and_grad(lambda q: _loss(model, q, b, kind, "d"))(p)
        return jax.lax.pmean(loss, "d"), jax.lax.pmean(grads, "d")

    sharded = tree_map(lambda x: x.reshape((N_DEV, PER_DEV) + x.shape[1:]), flow_batch)
    rparams = replicate_local(params)
    p_loss, p_grads = jax.pmap(step, axis_name="d")(rparams, sharded)
    np.testing.assert_allclose(np.asarray(p_loss), float(single_loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_grads), jax.tree.leaves(single_grads)):
        for dev in range(N_DEV):
            np.testing.assert_allclose(np.asarray(a[dev]), np.asarray(b), rtol=2e-4, atol=1e-6)
    assert float(single_loss) > 0


def test_padding_never_counts(flow_batch):
    """Changing the content of padding rows changes neither the loss nor the gradients."""
    model = _model()
    params = model.init(jax.random.PRNGKey(1), flow_batch, text_features=flow_batch["text"])["params"]
    other = dict(flow_batch)
    other["text"] = flow_batch["text"].copy()
    other["text"][-2:] = 100.0
    other["bytes"] = flow_batch["bytes"].copy()
    other["bytes"][-2:] = 255
    for kind in ("clip", "sigmoid"):
        la, ga = jax.value_and_grad(lambda p: _loss(model, p, flow_batch, kind, None))(params)
        lb, gb = jax.value_and_grad(lambda p: _loss(model, p, other, kind, None))(params)
        np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_multi_positive_targets_use_classes(flow_batch):
    """Texts of the same class are positives: with multi_positive the loss differs from plain CLIP."""
    model = _model()
    params = model.init(jax.random.PRNGKey(2), flow_batch, text_features=flow_batch["text"])["params"]
    zp, zt, scale, _ = model.apply({"params": params}, flow_batch, text_features=flow_batch["text"])
    a = losses.clip_loss(zp, zt, flow_batch["valid"], flow_batch["class_id"], scale, None, True)[0]
    b = losses.clip_loss(zp, zt, flow_batch["valid"], flow_batch["class_id"], scale, None, False)[0]
    assert abs(float(a) - float(b)) > 1e-4


def test_bf16_gradient_scatters_in_float32(flow_batch):
    """The byte-embedding gradient (a scatter-add of every byte position onto 256 rows) is summed in float32 also
    when the tower computes in bfloat16: a bf16 scatter runs on emulated bf16 atomics on GPUs, which made the bf16
    training step 8x slower than float32 on an H200 (benchmarks/model_speed.py)."""
    import re

    import jax.numpy as jnp

    cfg = dict(packets=4, bytes=32, patch_size=8, byte_dim=4, width=16, depth=1, heads=2)
    bf16 = TwoTowers(TwoTowerConfig(packet=PacketTowerConfig(**cfg, dtype=jnp.bfloat16), embed_dim=8))
    batch = {k: v[:PER_DEV] for k, v in flow_batch.items()}
    params = bf16.init(jax.random.PRNGKey(0), batch, text_features=batch["text"])["params"]
    grad = jax.jit(jax.grad(lambda p: _loss(bf16, p, batch, "clip", None)))
    # The lowered program, before a backend rewrites it (XLA:CPU widens bf16 scatters itself, XLA:GPU does not).
    lines = grad.lower(params).as_text().splitlines()
    scatter_types = []
    for i, line in enumerate(lines):
        if "stablehlo.scatter" in line:
            end = next(ln for ln in lines[i:] if ") -> tensor<" in ln)
            scatter_types.append(re.search(r"\) -> tensor<[\dx]*(\w+)>", end).group(1))
    assert "f32" in scatter_types, f"expected the byte-embedding gradient to be a float32 scatter: {scatter_types}"
    assert "bf16" not in scatter_types, scatter_types
    leaves = jax.tree.leaves(grad(params))
    assert leaves and all(np.isfinite(np.asarray(g, np.float32)).all() for g in leaves)


def test_size_table_reads_exact_packet_sizes(flow_batch):
    """`size_embed_dim` (off by default; docs/model.md, "What was tried"): a learned row per exact packet size,
    padding = row 0 and sizes past MAX_EMBEDDED_SIZE sharing the last row; the loss still trains through it."""
    from pclip_jax.models.packet_tower import MAX_EMBEDDED_SIZE

    cfg = dict(packets=4, bytes=32, patch_size=8, byte_dim=4, width=16, depth=1, heads=2)
    plain = TwoTowers(TwoTowerConfig(packet=PacketTowerConfig(**cfg), embed_dim=8))
    sized = TwoTowers(TwoTowerConfig(packet=PacketTowerConfig(**cfg, size_embed_dim=3), embed_dim=8))
    batch = {k: v[:PER_DEV] for k, v in flow_batch.items()}
    p_plain = plain.init(jax.random.PRNGKey(0), batch, text_features=batch["text"])["params"]
    p_sized = sized.init(jax.random.PRNGKey(0), batch, text_features=batch["text"])["params"]
    table = p_sized["packet_tower"]["size_embed"]["embedding"]
    assert table.shape == (MAX_EMBEDDED_SIZE + 1, 3)
    # The table plus three more input rows of the feature projection.
    assert count_params(p_sized) - count_params(p_plain) == table.size + 3 * cfg["width"]
    grads = jax.grad(lambda p: _loss(sized, p, batch, "clip", None))(p_sized)["packet_tower"]["size_embed"]
    used = np.unique(np.minimum(np.abs(np.asarray(batch["sizes"])), MAX_EMBEDDED_SIZE))
    touched = np.flatnonzero(np.abs(np.asarray(grads["embedding"])).sum(1) > 0)
    assert set(touched) <= set(used.tolist()) and len(touched) > 1
