"""Direct tests of the plumbing: errors (one line, exit status), parallel (shard, replicate, batch sizes), costs
(parameter counts by hand, device peaks) and onnx_runtime's refusals of a bad export directory."""
import json
import types

import jax
import numpy as np
import pytest

from pclip_bench import costs
from pclip_jax.plumbing import errors, runtime as parallel


# ----------------------------------------------------------------------------------------------- errors

def test_one_line_keeps_the_first_line_and_says_how_many_more():
    assert errors.one_line(ValueError("bad value\n  detail one\n\n  detail two")) == \
        "bad value (+2 more lines with --verbose)"
    assert errors.one_line(ValueError("  padded  ")) == "padded"
    assert errors.one_line(KeyError("train.steps")) == "missing key 'train.steps'"
    assert errors.one_line(RuntimeError()) == "RuntimeError"


def test_cli_errors_turns_user_errors_into_one_line_and_status(capsys):
    for error in (ValueError("v\nmore"), FileNotFoundError("x.pcap: no such file"), KeyError("k"),
                  RuntimeError("diverged"), PermissionError("p"), FloatingPointError("nan")):
        with errors.cli_errors() as status:
            raise error
        assert status.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
        assert err == f"error: {errors.one_line(error)}\n"
    with errors.cli_errors() as status:
        pass
    assert status.code == 0 and capsys.readouterr().err == ""


def test_cli_errors_verbose_interrupt_and_bugs(capsys):
    with errors.cli_errors(verbose=True) as status:
        raise ValueError("first\nsecond")
    err = capsys.readouterr().err
    assert status.code == 1 and "Traceback" in err and err.endswith("error: first\nsecond\n")
    with errors.cli_errors() as status:
        raise KeyboardInterrupt
    assert status.code == 130 and capsys.readouterr().err == "error: interrupted\n"
    with pytest.raises(TypeError):  # a bug is not a user error: its traceback is shown by Python
        with errors.cli_errors():
            raise TypeError("bug")


# ----------------------------------------------------------------------------------------------- parallel

def test_shard_and_batch_sizes():
    d = jax.local_device_count()
    assert d == 8  # tests/conftest.py: 8 host devices
    batch = {"x": np.arange(16 * 3).reshape(16, 3), "y": np.arange(16)}
    sharded = parallel.shard(batch)
    assert sharded["x"].shape == (8, 2, 3) and sharded["y"].shape == (8, 2)
    np.testing.assert_array_equal(sharded["x"].reshape(16, 3), batch["x"])
    with pytest.raises(ValueError, match="local batch 12 is not divisible by the 8 local devices"):
        parallel.shard({"x": np.zeros(12)})
    assert [parallel.global_batch_size(n) for n in (1, 8, 9, 16, 17)] == [8, 8, 16, 16, 24]
    assert parallel.process_slice(32) == slice(0, 32)  # one process: all rows


def test_replicate_and_unreplicate_round_trip():
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(1.5)}
    rep = parallel.replicate(tree)
    assert rep["w"].shape == (8, 2, 3)
    back = parallel.unreplicate(rep)
    assert isinstance(back["w"], np.ndarray)
    np.testing.assert_array_equal(back["w"], tree["w"])
    assert back["b"] == 1.5


# ----------------------------------------------------------------------------------------------- costs

def test_peak_flops_by_device_kind():
    assert costs.peak_flops(types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")) == 989e12
    assert costs.peak_flops(types.SimpleNamespace(device_kind="TPU v5 lite")) == 197e12
    assert costs.peak_flops(types.SimpleNamespace(device_kind="cpu")) is None
    assert costs.peak_flops(object()) is None


def test_bert_cost_counts_parameters_as_by_hand():
    from pclip_jax.models.bert import BertConfig

    v, h, i, p, layers, seq = 50, 16, 32, 24, 2, 8
    cfg = BertConfig(vocab_size=v, hidden_size=h, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=i, max_position_embeddings=p)
    c = costs.bert_cost(cfg, seq)
    embeddings = (v + p + 2) * h + 2 * h  # word, position, token type tables; LayerNorm
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # q, k, v, out; FFN; two LayerNorms
    assert c["params"] == embeddings + layers * layer and c["seq_len"] == seq
    # The dense layers cost 2 FLOPs per weight per token, attention's two products 4 * seq * h per token; XLA
    # counts the elementwise work (GELU, softmax, LayerNorm) on top, which is large at this width.
    matmuls = 2 * seq * layers * (4 * h * h + 2 * h * i) + 4 * seq * seq * h * layers
    assert matmuls <= c["flops_per_input"] < 3 * matmuls


def test_packet_tower_cost_grows_with_its_width():
    from configs import test as test_config
    from pclip_jax.plumbing.settings import from_config

    narrow = from_config(test_config.get_config())
    wide = narrow.replace(model={"width": 2 * narrow.model.width})
    a, b = costs.packet_tower_cost(narrow), costs.packet_tower_cost(wide)
    assert 0 < a["params"] < b["params"] and 0 < a["flops_per_flow"] < b["flops_per_flow"]
    # Every dense weight is used at least once per packet row of a flow: 2 FLOPs each.
    assert a["flops_per_flow"] > 2 * (a["params"] - 256 * narrow.model.byte_dim)


# ----------------------------------------------------------------------------------------------- onnx_runtime

def test_onnx_runtime_refuses_a_bad_export_directory(tmp_path):
    pytest.importorskip("onnxruntime")
    from pclip_jax.serving import onnx_runtime

    with pytest.raises(onnx_runtime.ExportError, match="no such export directory"):
        onnx_runtime.OnnxModel(tmp_path / "missing")
    with pytest.raises(onnx_runtime.ExportError, match="no packet_tower.onnx"):
        onnx_runtime.OnnxModel(tmp_path)
    (tmp_path / "packet_tower.onnx").write_bytes(b"not onnx")
    with pytest.raises(onnx_runtime.ExportError, match="manifest.json: missing"):
        onnx_runtime.OnnxModel(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99, "files": {}}))
    with pytest.raises(onnx_runtime.ExportError, match="export format 99"):
        onnx_runtime.OnnxModel(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": onnx_runtime.EXPORT_FORMAT, "files": {"packet_tower.onnx": {"sha256": "0" * 64}}}))
    with pytest.raises(onnx_runtime.ExportError, match="packet_tower.onnx: its contents differ"):
        onnx_runtime.OnnxModel(tmp_path)
    with pytest.raises(onnx_runtime.ExportError, match="config.json: missing"):
        onnx_runtime.read_export_settings(tmp_path)
    assert onnx_runtime.tower_file(4) == "packet_tower_k4.onnx"
