"""Typed settings: one place for defaults, strict parsing, round trip through config.json, older workdirs."""
import dataclasses
import json
import typing

import pytest

from configs import default as default_config
from configs import quickstart as quickstart_config
from pclip_jax.plumbing import settings as S


def test_the_default_config_is_the_settings_defaults():
    assert S.from_config(default_config.get_config()) == S.Settings()
    quick = S.from_config(quickstart_config.get_config())
    assert quick.train.num_steps == 400 and quick.train.dtype == "float32" and quick.data == S.DataSettings()


def test_round_trip_through_json():
    s = S.from_config(quickstart_config.get_config())
    assert S.from_dict(json.loads(json.dumps(S.to_dict(s)))) == s


def test_an_older_workdir_config_gets_the_defaults_its_code_used():
    stored = S.to_dict(S.Settings())
    for section, key in (("model", "name_fusion"), ("data", "use_names"), ("gnn", "node_prompts"),
                         ("train", "eval_every"), ("train", "stop_after"), ("eval", "probe_targets")):
        del stored[section][key]
    stored["gnn"]["mission"] = None  # older configs wrote None for "no mission"
    upgraded = S.from_dict(S.upgrade_dict(stored))
    assert upgraded.model.name_fusion == "token" and upgraded.data.use_names is False
    assert upgraded.gnn.node_prompts is False and upgraded.gnn.mission == ""
    assert upgraded.train.eval_every == upgraded.train.checkpoint_every
    with pytest.raises(S.SettingsError, match="newer than this pclip_jax"):
        S.upgrade_dict({"_format": S.SETTINGS_FORMAT + 1})


def test_a_workdir_config_from_before_the_shared_field_lists_loads_with_what_its_job_used():
    """A config.json written before the `gnn` section took GnnTrainConfig's fields (grad_clip, keep_checkpoints,
    class_balanced) and `gnn.model` GnnConfig's (flow_features): the job then trained with those defaults."""
    stored = json.loads(json.dumps({"_format": 2, **S.to_dict(S.Settings())}))
    for key in ("grad_clip", "keep_checkpoints", "class_balanced"):
        del stored["gnn"][key]
    del stored["gnn"]["model"]["flow_features"]
    loaded = S.from_dict(S.upgrade_dict(stored))
    assert loaded == S.Settings()
    g = loaded.gnn.train_config(seed=0)
    assert type(g) is S.GnnTrainConfig and type(g.model) is S.GnnConfig
    assert (g.grad_clip, g.keep_checkpoints, g.class_balanced, g.model.flow_features) == (1.0, 2, True, 0)


def test_each_model_has_one_field_list():
    """The settings' model sections are the models' own configs (issue 28): a field is declared once, and the job
    hands a section over without naming its fields."""
    from pclip_jax.models.gnn import GnnConfig
    from pclip_jax.models.packet_tower import PacketTowerConfig
    from pclip_jax.models.two_towers import TwoTowerConfig
    from pclip_jax.training import detection, towers
    from pclip_jax.training.train_gnn import GnnTrainConfig

    def declared(cls):
        return set(vars(cls).get("__annotations__", {}))

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert S.GnnConfig is GnnConfig and S.GnnTrainConfig is GnnTrainConfig
    assert typing.get_type_hints(S.GnnSettings)["model"] is GnnConfig and issubclass(S.GnnSettings, GnnTrainConfig)
    assert issubclass(S.ModelSettings, S.PacketTowerFields) and issubclass(PacketTowerConfig, S.PacketTowerFields)
    assert issubclass(S.ModelSettings, S.TwoTowerFields) and issubclass(TwoTowerConfig, S.TwoTowerFields)
    assert declared(S.ModelSettings) == {"name_dim"}
    assert declared(PacketTowerConfig) == {"packets", "bytes", "names", "dtype"}  # from data.* and train.dtype
    assert declared(S.GnnSettings) & names(GnnTrainConfig) == {"seed"}  # the job's default: -1 = train.seed

    # Non-default values reach the models' configs, overrides included (`--config.gnn.model.hidden=48`).
    config = default_config.get_config()
    config.model.width, config.model.heads, config.model.dropout, config.model.embed_dim = 64, 4, 0.0, 32
    config.model.name_fusion, config.model.size_embed_dim, config.model.pool_queries = "token", 3, 2
    config.gnn.model.hidden, config.gnn.model.level_loss_weights, config.gnn.grad_clip = 48, (1, 0), 0.5
    config.gnn.seed, config.train.seed = -1, 7
    s = S.from_config(config)
    built = towers.model_config(s)
    assert all(getattr(built.packet, n) == getattr(s.model, n) for n in names(S.PacketTowerFields))
    assert built.embed_dim == 32 and built.packet.width == 64 and built.packet.names == s.data.use_names
    g = detection.gnn_train_config(s)
    assert g.model == s.gnn.model and g.model.hidden == 48 and g.model.level_loss_weights == (1.0, 0.0)
    assert g.grad_clip == 0.5 and g.seed == 7 and type(g) is GnnTrainConfig
    # The section itself handed to train_gnn is read as its GnnTrainConfig fields (the checkpoints' stamp).
    assert type(GnnTrainConfig.from_config(s.gnn)) is GnnTrainConfig
    with pytest.raises(S.SettingsError, match=r"config.gnn.model.level_loss_weights\[1\]='x': must be a number"):
        s.replace(gnn={"model": {"level_loss_weights": [1.0, "x"]}})
    with pytest.raises(S.SettingsError, match="config.gnn.model.flow_features=2: must be 0 in a job's settings"):
        s.replace(gnn={"model": {"flow_features": 2}})


def test_relative_paths_become_absolute(tmp_path):
    (tmp_path / "model").mkdir()
    s = S.Settings().replace(text={"encoder": "model"}, data={"manual_dir": "data", "labels": "ndpi:res"},
                             gnn={"kg": "my.yaml"})
    a = S.with_absolute_paths(s, tmp_path)
    assert a.text.encoder == str(tmp_path / "model") and a.data.manual_dir == str(tmp_path / "data")
    assert a.data.labels == f"ndpi:{tmp_path / 'res'}" and a.gnn.kg == str(tmp_path / "my.yaml")
    # A Hugging Face repo id (no such directory) stays as it is; so does a shipped graph name.
    assert S.with_absolute_paths(S.Settings(), tmp_path).text.encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert S.with_absolute_paths(S.Settings(), tmp_path).gnn.kg == "ndpi"


def test_a_source_with_an_unknown_label_kind_names_its_entry():
    s = S.from_config(quickstart_config.get_config())
    mixed = s.replace(data={"inputs": ("a/pcap=ndpi:a/result", "b=folder")})
    assert mixed.data.mixed and not s.data.mixed
    with pytest.raises(S.SettingsError, match=r"config.data.inputs\[1\] \(label kind after '='\)='folders'"):
        s.replace(data={"inputs": ("a/pcap=ndpi:a/result", "b=folders")})
