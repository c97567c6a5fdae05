"""Live streams (`data.live.LiveFlows`): flows answered as soon as their inputs are final, each exactly once, with
the whole-flow tensors; memory bounded on an endless stream. Built captures: nothing from ../shared needed. The
answers through a model are tested in tests/test_classify.py (`test_live_*`)."""
import numpy as np
import pytest

from pclip_jax.data import capture
from pclip_jax.data.ingest import IngestConfig, ingest_file
from pclip_jax.data.live import LiveFlows
from tests import capture_fuzz as cf

TENSORS = ("bytes", "sizes", "iat", "tcp_flags", "num_packets")


def _answers(path, config, chunk=1 << 12, **kwargs):
    live = LiveFlows(config, **kwargs)
    out, held = [], []
    for b in capture.read_batches(path, [], chunk):
        out += live.add(b)
        held.append((live.held_pages, live.tracked_flows))
    out += live.flush()
    return live, out, held


@pytest.mark.parametrize("packets", [4, 16])
def test_every_flow_is_answered_once_with_its_whole_flow_inputs(tmp_path, packets):
    path = tmp_path / "x.pcap"
    path.write_bytes(cf.pcap_bytes(cf.conversations(n_flows=40, packets=20, seed=3)))
    config = IngestConfig(packets=packets, bytes=64)
    whole = ingest_file(path, "x", config)
    live, answers, _ = _answers(path, config)
    got = {}
    for a in answers:
        assert a.kind in ("early", "ended")
        for i, fid in enumerate(a.table.meta["flow_id"].tolist()):
            assert fid not in got, f"flow {fid} answered twice"
            got[fid] = (a.kind, a.table, i)
    assert sorted(got) == list(range(len(whole)))
    kinds = {k for k, _, _ in got.values()}
    assert "early" in kinds  # 20-packet conversations reach K before they end
    for fid, (kind, table, i) in got.items():
        for k in TENSORS:
            np.testing.assert_array_equal(table.tensors[k][i], whole.tensors[k][fid], err_msg=f"{fid} {k} ({kind})")
        assert table.meta["server_name"][i] == whole.meta["server_name"][fid]
        if kind == "ended":  # counters are the whole flow's too
            for c in ("c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes", "client_ip", "server_port"):
                assert table.meta[c][i] == whole.meta[c][fid], (fid, c)
        else:
            assert table.meta["c2s_packets"][i] + table.meta["s2c_packets"][i] >= packets


def test_final_lines_carry_the_totals_of_flows_answered_early(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(cf.pcap_bytes(cf.conversations(n_flows=10, packets=30, seed=1)))
    config = IngestConfig(packets=4, bytes=32)
    whole = ingest_file(path, "x", config)
    _, answers, _ = _answers(path, config, final=True)
    early = {f for a in answers if a.kind == "early" for f in a.table.meta["flow_id"].tolist()}
    final = [a for a in answers if a.kind == "final"]
    assert early and {f for a in final for f in a.table.meta["flow_id"].tolist()} == early
    for a in final:
        for i, fid in enumerate(a.table.meta["flow_id"].tolist()):
            assert a.table.meta["c2s_packets"][i] == whole.meta["c2s_packets"][fid]
            assert a.table.meta["last_ts"][i] == whole.meta["last_ts"][fid]


def _endless(n_flows: int, start_ns: int = 1_700_000_000 * 10**9):
    """Many short conversations in time order: a stream that never repeats a flow key."""
    out = []
    for f in range(n_flows):
        client, server, sport = 0x0A000000 + f, 0xC0A80001, 1024 + f % 60000
        t = start_ns + f * 2_000_000
        out += [(t, cf.ipv4_tcp(client, server, sport, 443, 0x02)),
                (t + 1_000_000, cf.ipv4_tcp(server, client, 443, sport, 0x12)),
                (t + 90_000_000_000, cf.ipv4_tcp(client, server, sport, 443, 0x10))]  # its last packet much later
    return sorted(out, key=lambda x: x[0])


def test_memory_stays_bounded_on_an_endless_stream(tmp_path):
    """20,000 conversations, each waiting 90 s for its third packet (K = 4 is never reached): the caps hold at every
    chunk (pages of packet rows, tracked flows), every flow is answered exactly once, and the flows that had to go
    early say so (`partial`, `evicted`)."""
    path = tmp_path / "endless.pcap"
    path.write_bytes(cf.pcap_bytes(_endless(20_000)))
    config = IngestConfig(packets=4, bytes=32, idle_timeout=300.0)
    live, answers, held = _answers(path, config, chunk=1 << 16, max_flows=3_000, page_flows=256, max_pages=4)
    assert max(p for p, _ in held) <= 4 and max(f for _, f in held) <= 3_000
    fids = np.concatenate([a.table.meta["flow_id"] for a in answers])
    # Every flow the tracker made is answered once; a conversation evicted before its last packet comes back as a
    # second flow (the cap's stated cost), so there are between 20,000 and 40,000 of them.
    assert len(fids) == len(set(fids.tolist())) == live.tracker.n_ids
    assert 20_000 < len(fids) <= 40_000
    assert live.counts["partial"] > 0
    assert sum(live.counts[k] for k in ("early", "ended", "evicted", "partial")) == len(fids)
    assert not live.tracker.names  # nothing kept per answered flow but its counters


def test_damaged_stream_keeps_the_flows_before_the_damage(tmp_path):
    good = cf.pcap_bytes(cf.conversations(n_flows=6, packets=8))
    path = tmp_path / "damaged.pcap"
    path.write_bytes(good + b"\xff" * 16 + b"garbage" * 100)
    config = IngestConfig(packets=4, bytes=32)
    errors = []
    live = LiveFlows(config)
    answers = []
    for b in capture.read_batches(path, errors, 1 << 10):
        answers += live.add(b)
    answers += live.flush()
    assert len(errors) == 1 and errors[0].offset == len(good)
    assert sum(len(a.table) for a in answers) == 6
