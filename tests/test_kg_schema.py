"""Knowledge-graph schema validation, the shipped graphs and missions."""
import copy

import numpy as np
import pytest

from pclip_jax.data.labels import load_hierarchy
from pclip_jax.graph.missions import Mission, apply_mission, mission_from_statement, missions_of, resolve_mission
from pclip_jax.graph.schema import KGValidationError, load_kg, parse_kg, save_kg, shipped_kg_path

SMALL = {
    "name": "small",
    "nodes": [
        {"id": "m", "level": 0, "name": "Mission", "descriptions": ["find tunnels"]},
        {"id": "vpn", "level": 1, "parent": "m", "name": "VPN", "descriptions": ["encrypted tunnel"]},
        {"id": "web", "level": 1, "parent": "m", "name": "Web", "descriptions": ["browsing"], "aliases": ["HTTP"]},
        {"id": "wg", "level": 2, "parent": "vpn", "name": "WireGuard", "descriptions": ["wireguard handshake"]},
    ],
}


def _with(mutate):
    data = copy.deepcopy(SMALL)
    mutate(data)
    return data


@pytest.mark.parametrize("name", ["ndpi", "iscx_vpn2016", "ustc_tfc2016"])
def test_shipped_graphs_load(name):
    kg = load_kg(shipped_kg_path(name))
    assert len(kg.level_ids(0)) == 1
    for n in kg.nodes:
        assert n.descriptions and all(d.strip() for d in n.descriptions)
        if n.level:
            assert kg.node(n.parent).level == n.level - 1
    for mission in missions_of(kg).values():
        sub, prior = apply_mission(kg, mission)
        assert prior.shape == (len(sub.nodes),)


def test_ndpi_graph_covers_the_label_hierarchy():
    kg = load_kg(shipped_kg_path("ndpi"))
    assert kg.level_ids(1) == list(load_hierarchy().level1)
    assert kg.resolve("ustc", 1) is None
    assert kg.resolve("vpn", 1) == "VPN/Tunnel"          # alias, case-insensitive
    assert kg.path("WireGuard") == ["ndpi", "VPN/Tunnel", "WireGuard"]


def test_ustc_graph_has_benign_and_malicious_families():
    kg = load_kg(shipped_kg_path("ustc_tfc2016"))
    assert kg.level_ids(1) == ["benign", "malicious"]
    assert len(kg.children("benign")) == 10 and len(kg.children("malicious")) == 10
    assert "Zeus" in kg.children("malicious")


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["nodes"][3].update(parent="nope"), r"node 'wg'.*parent 'nope' does not exist"),
    (lambda d: d["nodes"][3].pop("parent"), r"node 'wg'.*missing its parent"),
    (lambda d: d["nodes"].append({"id": "vpn", "level": 1, "parent": "m", "descriptions": ["x"]}),
     r"node 'vpn'.*duplicate id"),
    (lambda d: d["nodes"][2].update(descriptions=["ok", "  "]), r"node 'web'.*descriptions\[1\] is empty"),
    (lambda d: d["nodes"][2].update(descriptions=[]), r"node 'web'.*at least one description"),
    (lambda d: d["nodes"][3].update(level=1), r"node 'wg'.*level 1 but its parent 'vpn' has level 1"),
    (lambda d: d["nodes"][0].update(level=5), r"node 'm'.*'level' must be an integer"),
    (lambda d: d["nodes"][2].update(colour="red"), r"node 'web'.*unknown field"),
    (lambda d: d.setdefault("edges", []).append({"type": "child", "source": "web", "target": "wg"}),
     r"node 'wg'.*two parents"),
])
def test_invalid_graphs_name_the_node(mutate, match):
    with pytest.raises(KGValidationError, match=match):
        parse_kg(_with(mutate), source="test.yaml")


def test_cycle_is_reported_as_a_cycle():
    data = _with(lambda d: d["nodes"].extend([
        {"id": "a", "level": 1, "parent": "b", "descriptions": ["a"]},
        {"id": "b", "level": 2, "parent": "a", "descriptions": ["b"]}]))
    with pytest.raises(KGValidationError, match=r"test.yaml: node 'a': cycle in the hierarchy: a -> b -> a"):
        parse_kg(data, source="test.yaml")


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [ {id: x\n")
    with pytest.raises(KGValidationError, match="bad.yaml: not valid YAML"):
        load_kg(bad)
    with pytest.raises(KGValidationError, match="missing.yaml: cannot read"):
        load_kg(tmp_path / "missing.yaml")


def test_round_trip(tmp_path):
    kg = load_kg(shipped_kg_path("ndpi"))
    save_kg(kg, tmp_path / "kg.yaml")
    again = load_kg(tmp_path / "kg.yaml")
    assert again.nodes == kg.nodes and again.related == kg.related
    assert set(again.missions) == set(kg.missions)


def test_mission_selects_and_weights():
    kg = load_kg(shipped_kg_path("ndpi"))
    mission = Mission("vpn", "find VPN tunnels and remote access", focus=("VPN/Tunnel", "RemoteAccess"),
                      weights={"VPN/Tunnel": 2.0}, keep_others=False)
    sub, prior = apply_mission(kg, mission)
    assert sub.level_ids(1) == ["VPN/Tunnel", "RemoteAccess"]
    assert set(sub.children("RemoteAccess")) == set(kg.children("RemoteAccess"))
    assert prior[sub.index("VPN/Tunnel")] == pytest.approx(np.log(2.0))
    assert prior[sub.index("RemoteAccess")] == 0.0
    kept, _ = apply_mission(kg, Mission("vpn", "x", focus=("VPN/Tunnel",)))
    assert len(kept.nodes) == len(kg.nodes)          # keep_others: the model can still say "something else"


def test_mission_from_statement_and_zero_shot_extra_node():
    kg = load_kg(shipped_kg_path("ndpi"))
    m = mission_from_statement(kg, "find VPN tunnels and remote access")
    assert set(m.focus) >= {"VPN/Tunnel", "RemoteAccess"}
    extra = resolve_mission(kg, "vpn_remote_access")
    assert extra.focus == ("VPN/Tunnel", "RemoteAccess")
    raw = {"statement": "find onion routing", "focus": ["VPN/Tunnel"],
           "extra_nodes": [{"id": "I2P", "level": 2, "parent": "VPN/Tunnel", "name": "I2P",
                            "descriptions": ["I2P garlic routing between peers over UDP and TCP"]}]}
    from pclip_jax.graph.missions import parse_mission
    sub, _ = apply_mission(kg, parse_mission("onion", raw))
    assert sub.node("I2P").parent == "VPN/Tunnel" and "I2P" in sub.children("VPN/Tunnel")
    with pytest.raises(KGValidationError, match=r"mission 'onion'.*extra_nodes\[0\].*at least one description"):
        parse_mission("onion", {"extra_nodes": [{"id": "x", "level": 2, "parent": "Web", "descriptions": []}]})
    with pytest.raises(KGValidationError, match=r"unknown node 'Nope'"):
        apply_mission(kg, Mission("bad", "x", focus=("Nope",)))
    with pytest.raises(KGValidationError, match="matches no node"):
        mission_from_statement(kg, "zzz qqq")
