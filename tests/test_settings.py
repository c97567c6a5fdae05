"""Typed settings: one place for defaults, strict parsing, round trip through config.json, older workdirs."""
import json

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
