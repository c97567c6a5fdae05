"""Flows of an endless packet stream, handed over as soon as the model can answer them, in bounded memory.

`classify` on capture files answers every flow when its capture has been read. On a live link (`tcpdump -w - |
python -m pclip_jax.classify ... -`) that is never. `LiveFlows` runs the same flow tracker as ingest
(`data.flows.FlowTracker`: same keys, timeouts, masking, server names) and after every chunk of packets returns:

* `early`: flows that now hold the K packets the packet tower reads (and, with K < 8, their first 8 packets or a
  server name: names are looked for in the first 8). Their inputs are final: later packets only move counters, so
  the answer is the one the whole flow gets from `classify` on the capture file (tested).
* `ended`: flows that ended (idle or active timeout, FIN/RST and a new SYN) before reaching K packets.
* `evicted`: flows pushed out by the cap on tracked flows (`max_flows`; the ones idle longest go first), answered
  with the packets they have.
* `partial`: flows still waiting for their K-th packet in the oldest page of packet rows when more than `max_pages`
  pages are held: answered with the packets they have, so that the page can be freed.
* `final` (only with `final=True`): a flow answered before has ended; its totals (packets, bytes, last time).

Memory: packet rows live in pages of `page_flows` flows, and a page is freed once every flow in it is answered;
at most `max_pages` pages and `max_flows` tracked flows (their counters) are held, however long the stream runs.
An answered flow keeps only its counters (for `final`). Time is the packets' time, as in ingest: an idle link
expires nothing until the next packet arrives (`flush()` at the end of the stream answers the rest).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pclip_jax.data import capture, flows, tensors
from pclip_jax.data.flow_table import FlowTable
from pclip_jax.data.ingest import IngestConfig, _columns

KINDS = ("early", "ended", "evicted", "partial", "final")


@dataclasses.dataclass
class Answer:
    """Flows handed over together: `kind` (module docstring) and their rows of a FlowTable (`flow_id` is the
    flow's number in the stream, in first-packet order)."""
    kind: str
    table: FlowTable


class LiveFlows:
    def __init__(self, config: IngestConfig, name: str = capture.STDIN, max_flows: int = 100_000,
                 page_flows: int = 1024, max_pages: int = 64, final: bool = False, compiled: bool = True):
        if max_flows < 1 or page_flows < 1 or max_pages < 2:
            raise ValueError(f"LiveFlows: max_flows ({max_flows}) and page_flows ({page_flows}) must be >= 1 and "
                             f"max_pages ({max_pages}) >= 2")
        self.config, self.name, self.final = config, name, final
        self.max_flows, self.max_pages = max_flows, max_pages
        self.tracker = flows.FlowTracker(config.packets, config.bytes, config.idle_timeout, config.active_timeout,
                                         config.mask, expected_flows=page_flows, payload_rows=config.payload_rows,
                                         compiled=compiled, page_flows=page_flows)
        self.packets = 0
        self.counts = {k: 0 for k in KINDS}
        self.packet_counts = dict(packets=0, ip_packets=0, later_fragments=0, non_ip=0, malformed=0)

    # -- what the caller calls --------------------------------------------------------------------------------
    def add(self, batch: capture.PacketBatch) -> list[Answer]:
        """Track a chunk of packets; return the flows that can be answered now."""
        h = capture.parse_headers(batch)
        kinds = np.bincount(h.kind, minlength=4)
        pc = self.packet_counts
        pc["packets"] += len(batch)
        pc["ip_packets"] += int(kinds[capture.FLOW])
        pc["later_fragments"] += int(kinds[capture.LATER_FRAGMENT])
        pc["non_ip"] += int(kinds[capture.NON_IP])
        pc["malformed"] += int(kinds[capture.MALFORMED])
        tr = self.tracker
        tr.add(batch, h, self.packets)
        self.packets += len(batch)
        out = []
        s = tr.s
        full = np.nonzero(s["active"] & ~s["answered"] & (s["nrow"] >= tr.K))[0]
        # The model also reads the server name, looked for in a flow's first NAME_PACKETS packets (the first found
        # wins): with K smaller than that, a flow without a name yet waits for them, so its answer stays the
        # whole-flow answer.
        unsure = s["npk"][full] < flows.NAME_PACKETS
        if unsure.any():
            named = np.fromiter((int(f) in tr.names for f in s["fid"][full[unsure]].tolist()), bool, int(unsure.sum()))
            unsure[np.flatnonzero(unsure)[named]] = False
            full = full[~unsure]
        if len(full):
            out.append(self._answer_slots("early", full))
        tr.expire()
        active = np.nonzero(s["active"])[0]
        if len(active) > self.max_flows:  # the cap: the flows idle longest leave first
            over = active[np.argsort(s["last_ts"][active], kind="stable")[:len(active) - self.max_flows]]
            tr._release(over)
            out += self._drain("evicted")
        out += self._drain("ended")
        out += self._free_pages()
        return [a for a in out if len(a.table)]

    def flush(self) -> list[Answer]:
        """The end of the stream: every flow still tracked is answered (or, answered before, finalised)."""
        tr = self.tracker
        if tr.s:
            tr._release(np.nonzero(tr.s["active"])[0])
        out = self._drain("ended")
        out += self._free_pages()
        return [a for a in out if len(a.table)]

    @property
    def tracked_flows(self) -> int:
        return int(self.tracker.s["active"].sum()) if self.tracker.s else 0

    @property
    def held_pages(self) -> int:
        return len(self.tracker.pages)

    # -- internals ------------------------------------------------------------------------------------------
    def _rows(self, fids: np.ndarray) -> dict[str, np.ndarray]:
        """Packet rows of the flows `fids` from the tracker's pages (zeros for a freed page: never asked for)."""
        tr = self.tracker
        out = {k: np.zeros((len(fids),) + v.shape[1:], v.dtype) for k, v in tr.pages[-1][1].items()}
        for start, page in tr.pages:
            m = (fids >= start) & (fids < start + len(page["sizes"]))
            if m.any():
                for k, v in page.items():
                    out[k][m] = v[fids[m] - start]
        return out

    def _table(self, kind: str, f: dict, fids: np.ndarray) -> Answer:
        names = self.tracker.names
        f = dict(f, **self._rows(fids))
        f["server_name"] = np.array([names.get(int(x), "") for x in fids.tolist()], dtype=str) if len(fids) else \
            np.zeros(0, "<U1")
        meta, tens = _columns(self.name, f, self.config)
        meta["flow_id"] = fids.astype(np.int64)
        self.counts[kind] += len(fids)
        return Answer(kind, FlowTable(meta, tens, list(tensors.STATS_NAMES), {}))

    def _answer_slots(self, kind: str, slots: np.ndarray) -> Answer:
        """Flows still tracked, answered now with the packets they have (their statistics so far)."""
        s = self.tracker.s
        acc = {k: v[slots] for k, v in s.items()}
        f = {k: acc[k] for k in flows._KEEP}
        f["stats"] = tensors.finalize_stats(acc)
        s["answered"][slots] = True
        return self._table(kind, f, acc["fid"])

    def _drain(self, kind: str) -> list[Answer]:
        """Flows the tracker released: answered now if not before; their totals when answered before (`final`)."""
        tr = self.tracker
        done, tr.done = tr.done, []
        if not done:
            return []
        block = {k: np.concatenate([d[k] for d in done]) for k in done[0]}
        out = []
        new = ~block["answered"]
        if new.any():
            out.append(self._table(kind, {k: v[new] for k, v in block.items()}, block["fid"][new]))
        if self.final and (~new).any():
            out.append(self._table("final", {k: v[~new] for k, v in block.items()}, block["fid"][~new]))
        return out

    def _free_pages(self) -> list[Answer]:
        """Free every page (but the newest) whose flows are all answered; past `max_pages`, answer the flows that
        hold the oldest pages (`partial`) and free them."""
        tr = self.tracker
        s = tr.s
        if not s:
            return []
        waiting = np.sort(s["fid"][s["active"] & ~s["answered"]])
        tr.pages = [(start, page) for i, (start, page) in enumerate(tr.pages)
                    if i == len(tr.pages) - 1 or np.searchsorted(waiting, start + len(page["sizes"]))
                    > np.searchsorted(waiting, start)]
        out = []
        while len(tr.pages) > self.max_pages:
            start, page = tr.pages[0]
            end = start + len(page["sizes"])
            slots = np.nonzero(s["active"] & ~s["answered"] & (s["fid"] >= start) & (s["fid"] < end))[0]
            if len(slots):
                out.append(self._answer_slots("partial", slots))
            tr.pages.pop(0)
        if tr.names:  # server names are only needed until a flow is answered
            w = set(s["fid"][s["active"] & ~s["answered"]].tolist())
            tr.names = {f: n for f, n in tr.names.items() if f in w}
        return out
