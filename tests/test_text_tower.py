"""Text tower: reproduces sentence-transformers' all-MiniLM-L6-v2 embeddings from the real weights; a small encoder
from scratch and the errors also with the stand-in encoder."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pclip_jax.plumbing.runtime import count_params
from pclip_jax.models.bert import BertConfig, BertEncoder
from pclip_jax.models.text_tower import (TextTokenizer, init_text_encoder, load_text_encoder,
                                         resolve_model_dir)

CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def minilm(real_minilm_dir):
    module, params, tok = load_text_encoder(real_minilm_dir)
    apply = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask))
    return module, params, tok, apply


@pytest.fixture(scope="module")
def reference(real_minilm_dir):
    return json.loads((real_minilm_dir / "reference_embeddings.json").read_text())


def test_reproduces_reference_embeddings(minilm, reference):
    module, params, tok, apply = minilm
    sentences = reference["sentences"]
    assert "" in sentences and max(map(len, sentences)) > 1000  # empty and long sentence covered
    assert module.config.hidden_size == 384 and module.config.num_hidden_layers == 6
    assert tok.max_seq_length == 256
    batch = tok.encode(sentences, max_len=256)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (len(sentences), 256)
    lengths = batch["attention_mask"].sum(1)
    for i, want in enumerate(reference["input_ids_first3"]):
        assert batch["input_ids"][i, :lengths[i]].tolist() == want
    # Every sentence is [CLS] ... [SEP] followed by padding; none of these reaches 256 tokens.
    np.testing.assert_array_equal(lengths, tok.num_tokens(sentences))
    assert lengths.max() < 256 and lengths[sentences.index("")] == 2
    rows = np.arange(len(sentences))
    assert (batch["input_ids"][:, 0] == CLS).all() and (batch["input_ids"][rows, lengths - 1] == SEP).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == PAD).all()

    emb = np.asarray(apply(params, batch["input_ids"], batch["attention_mask"]))
    want = np.asarray(reference["embeddings"], np.float64)
    assert emb.shape == want.shape == (len(sentences), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = (emb * want).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, dict(zip(sentences, cos.round(6)))


def test_fixed_padding_and_truncation(minilm, reference):
    module, params, tok, apply = minilm
    sentences = reference["sentences"]
    long_i = int(np.argmax([len(s) for s in sentences]))
    short = tok.encode(sentences, max_len=32)  # tokenizer.json itself says pad/truncate to 128
    assert short["input_ids"].shape == (len(sentences), 32)
    # The long sentence is cut to 32 tokens and keeps its final [SEP], as sentence-transformers does.
    assert short["attention_mask"][long_i].all() and short["input_ids"][long_i, -1] == SEP
    full = tok.encode(sentences, max_len=256)
    np.testing.assert_array_equal(short["input_ids"][long_i, :31], full["input_ids"][long_i, :31])

    e32 = np.asarray(apply(params, short["input_ids"], short["attention_mask"]))
    want = np.asarray(reference["embeddings"])
    fits = tok.num_tokens(sentences) <= 32
    assert fits.sum() == len(sentences) - 1
    # Padding must not change the embedding of a sentence that fits (mask correctness).
    assert ((e32 * want).sum(1)[fits] >= 0.9999).all()
    assert (e32[long_i] * want[long_i]).sum() < 0.99  # truncation really changed it

    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["x"], max_len=1)
    with pytest.raises(TypeError, match="list of strings"):
        tok.encode("one string", max_len=8)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode(["ok", 3], max_len=8)
    assert tok.encode([], max_len=8)["input_ids"].shape == (0, 8)


def test_bf16_compute_and_unnormalised_output(minilm, reference):
    module, params, tok, apply = minilm
    batch = tok.encode(reference["sentences"][:6], max_len=32)
    e32 = np.asarray(apply(params, batch["input_ids"], batch["attention_mask"]))
    bf16 = BertEncoder(module.config, dtype=jnp.bfloat16)
    e16 = np.asarray(jax.jit(lambda p, i, m: bf16.apply({"params": p}, i, m))(
        params, batch["input_ids"], batch["attention_mask"]))
    assert e16.dtype == np.float32
    assert ((e16 * e32).sum(1) >= 0.999).all()
    raw = np.asarray(module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                  normalize=False))
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1) > 0.05).all()
    np.testing.assert_allclose(raw / norms[:, None], e32, atol=1e-5)


def test_small_config_from_scratch(minilm_dir):
    cfg = BertConfig.small()
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (128, 2)
    module, params, tok = init_text_encoder(jax.random.PRNGKey(0), cfg, minilm_dir)
    # MiniLM's vocabulary size (BertConfig.small's, whatever the tokenizer); the word embeddings dominate the count.
    assert 3.9e6 < count_params(params) < 4.5e6
    texts = ["bursty TCP download", "steady small UDP packets both ways", ""]
    b = tok.encode(texts, max_len=16)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def embed_train(p, ids, mask, rng):
        return module.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": rng})

    embed_det = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask))
    e1 = np.asarray(embed_det(params, b["input_ids"], b["attention_mask"]))
    e2 = np.asarray(embed_det(params, b["input_ids"], b["attention_mask"]))
    assert e1.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(e1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e1, e2)  # deterministic: no hidden state, no dropout
    # Dropout is active in training; a new rng (or new batch of the same shape) never recompiles.
    d1 = embed_train(params, b["input_ids"], b["attention_mask"], jax.random.PRNGKey(1))
    d2 = embed_train(params, b["input_ids"], b["attention_mask"], jax.random.PRNGKey(2))
    b2 = tok.encode(["another three", "texts of", "the same padded length"], max_len=16)
    embed_train(params, b2["input_ids"], b2["attention_mask"], jax.random.PRNGKey(3))
    assert not np.allclose(d1, d2) and not np.allclose(d1, e1)

    def loss(p):
        e = module.apply({"params": p}, b["input_ids"], b["attention_mask"])
        return -(e[0] * e[1]).sum()

    grads = jax.jit(jax.grad(loss))(params)
    gnorm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
    assert np.isfinite(gnorm) and gnorm > 0
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ids = np.zeros((1, cfg.max_position_embeddings + 1), np.int32)
        module.apply({"params": params}, ids, np.ones_like(ids))
    with pytest.raises(ValueError, match="num_attention_heads"):
        BertConfig.small(hidden_size=130, num_attention_heads=4)


def test_clear_errors(minilm_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_text_encoder(tmp_path / "no/such/dir")
    # A repo id with no network and no cache: says offline, names the repo.
    with pytest.raises(FileNotFoundError, match="sentence-transformers/all-MiniLM-L6-v2.*offline"):
        resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2", offline=True,
                          cache_dir=str(tmp_path / "hub"))
    # A config that does not match the weights: the missing tensor is named.
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "sentence_bert_config.json"):
        (bad / name).symlink_to(minilm_dir / name)
    config = json.loads((minilm_dir / "config.json").read_text())
    layers = config["num_hidden_layers"]  # 6 in MiniLM
    (bad / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=layers + 1)))
    with pytest.raises(KeyError, match=f"encoder.layer.{layers}"):
        load_text_encoder(bad)
    (bad / "config.json").write_text(json.dumps(dict(config, intermediate_size=1024)))
    with pytest.raises(ValueError, match=f"intermediate.dense.weight.*{config['intermediate_size']}"):
        load_text_encoder(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        load_text_encoder(bad)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer(tmp_path / "tokenizer.json")
