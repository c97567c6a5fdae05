"""Packets -> bidirectional flows, vectorised per chunk of packets.

Flow key: (IP protocol, outer VLAN id, the two (address, port) endpoints in canonical order), so both
directions share one key; the client is the sender of the flow's first packet.

A new flow starts for a key when
* the key has no active flow;
* the previous packet of the key is more than ``idle_timeout`` old;
* the flow is older than ``active_timeout``;
* TCP only: the flow has ended (an RST, or a FIN from each side) and this packet is a SYN without ACK.
  Packets after the end that are not a new SYN (the last ACK of a teardown, retransmitted FINs) stay in the
  old flow, so a normal close never produces extra one-packet flows.

Memory is bounded by the number of active flows: a flow idle for longer than ``idle_timeout`` (in capture
time) is finalised and its slot is reused. Capture time for that purpose is a watermark: the oldest timestamp
among the last ``WATERMARK_PACKETS`` packets read, not the newest. A flow is finalised only once it is idle past its
timeout at that watermark, so unless the capture's time runs backwards every later packet of its key would have
started a new flow anyway: where the file is cut into read chunks does not change the flows, also when a few
packets carry a timestamp far ahead of their neighbours (a clock glitch), which under a newest-packet clock
finalised every flow active at the next chunk boundary (tested with tiny chunks and a one-day jump). What stays is the output itself: the first K packet rows of every
flow (written straight to their place in the final [N, K, B] array) and its statistics.

The per-key state machine above is evaluated with numpy over the whole chunk; only keys that see a SYN after a
FIN or RST, or exceed the active timeout, within a chunk are walked packet by packet. Where the install built
``_capture_c`` (docs/architecture.md, "Ingest speed"), that walk, the keys and their grouping, the masked rows and
the server names run compiled; ``FlowTracker(compiled=False)`` keeps the Python/numpy steps they are tested against.

Effect on agreement with nDPI's ndpiReader (which neither times flows out nor ends them on FIN/RST in its
regression outputs), over the 5,410 flows of ../shared/data/ndpi whose 5-tuple is in the capture: same
per-direction packet counts for 99.63% with no timeouts and no FIN/RST rule, 99.48% with the FIN/RST rule
(SYN retries after an RST become separate flows), 96.28% with the default timeouts and the rule.
"""
from __future__ import annotations

import numpy as np

from pclip_jax.data import capture, names, tensors

KEY_WIDTH = 40  # proto(1) vlan(2) lo_addr(16) lo_port(2) hi_addr(16) hi_port(2) ipver(1)
_BIG = np.iinfo(np.int64).max
# Per-flow fields handed to the flow table (besides the byte rows and the statistics).
_KEEP = ("key", "client_lo", "first_ts", "last_ts", "first_pkt", "npk", "nrow", "pk", "wb")
_ROWS = ("bytes", "sizes", "iat", "tcp_flags")  # per-packet rows, written straight to the output by flow id
NAME_PACKETS = 8  # server names are looked for in the payloads of a flow's first packets (pclip_jax/data/names.py)


def build_keys(h: capture.Headers, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical bidirectional keys uint8 [n, KEY_WIDTH] and ``src_is_lo`` (the sender is the key's low side)."""
    src, dst = h.src[sel], h.dst[sel]
    sp, dp = h.sport[sel], h.dport[sel]
    s8, d8 = src.view(">u8"), dst.view(">u8")  # addresses as two big-endian words: order = byte order
    hi_eq = s8[:, 0] == d8[:, 0]
    addr_lt = (s8[:, 0] < d8[:, 0]) | (hi_eq & (s8[:, 1] < d8[:, 1]))
    same = hi_eq & (s8[:, 1] == d8[:, 1])
    src_lo = np.where(same, sp <= dp, addr_lt)
    lo_a = np.where(src_lo[:, None], src, dst)
    hi_a = np.where(src_lo[:, None], dst, src)
    lo_p = np.where(src_lo, sp, dp)
    hi_p = np.where(src_lo, dp, sp)
    k = np.empty((len(sel), KEY_WIDTH), np.uint8)
    k[:, 0] = h.proto[sel]
    v = h.vlan[sel]
    k[:, 1], k[:, 2] = v >> 8, v & 0xFF
    k[:, 3:19] = lo_a
    k[:, 19], k[:, 20] = lo_p >> 8, lo_p & 0xFF
    k[:, 21:37] = hi_a
    k[:, 37], k[:, 38] = hi_p >> 8, hi_p & 0xFF
    k[:, 39] = h.ipver[sel]
    return k, src_lo


_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                 0x27D4EB2F165667C5], dtype=np.uint64)


def _group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys: (index of each distinct key's first row, group of every row).

    Sorting a 64-bit hash is much faster than sorting 40-byte rows; a collision is detected by comparing every
    row with its group's first row, and then the exact (slower) byte-row sort is used.
    """
    words = keys.view(np.uint64)  # [n, 5]
    h = (words * _MIX).sum(axis=1, dtype=np.uint64)
    h ^= h >> np.uint64(29)
    _, first_of, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    if not (keys == keys[first_of[inv]]).all():
        _, first_of, inv = np.unique(keys.view(f"V{KEY_WIDTH}").ravel(), return_index=True, return_inverse=True)
        inv = inv.ravel()
    return first_of, inv


WATERMARK_PACKETS = 64  # more consecutive forward-jumped packets than this move the expiry clock


class FlowTracker:
    """Streams PacketBatches of one capture into flows; ``finish()`` returns the finished flows as arrays."""

    def __init__(self, packets: int = 16, nbytes: int = 128, idle_timeout: float = 120.0,
                 active_timeout: float = 1800.0, mask: bool = True, expected_flows: int = 1024,
                 payload_rows: bool = False, compiled: bool = True, page_flows: int | None = None):
        self.K, self.B, self.mask = packets, nbytes, mask
        # Output pages after the first: None doubles them (a capture's flows end up in few pages); a fixed size lets
        # a live stream drop pages whose flows are all answered (`data.live`).
        self.page_flows = page_flows
        # Whether the compiled steps run: False gives the Python/numpy steps (keys, walk, rows, names) even where
        # _capture_c was built (the tests' reference; both give the same flows).
        self.compiled = compiled and capture._capture_c is not None
        self.payload_rows = payload_rows  # rows from packets that carry transport payload only (no bare ACKs)
        self.idle = int(idle_timeout * 1e9)
        self.active = int(active_timeout * 1e9)
        self.key2slot: dict[bytes, int] = {}
        self.free: list[int] = []
        self.cap = 0
        self.now = -_BIG
        self.recent_ts = np.zeros(0, np.int64)  # timestamps of the last WATERMARK_PACKETS packets, file order
        self.done: list[dict] = []
        self.s: dict[str, np.ndarray] = {}
        self._grow(256)
        # Output rows by flow id, in pages. The first page is sized generously from ``expected_flows``: np.zeros
        # maps fresh zero pages, so capacity that is never written costs address space, not memory, and in the
        # usual case the final table is a view of this one page (no copy).
        self.n_ids = 0
        self.pages = [(0, self._rows(max(int(expected_flows), 1024)))]
        self.names: dict[int, str] = {}  # flow id -> first cleartext server name seen

    # -- slot storage ---------------------------------------------------------------------------
    def _fresh(self, n: int) -> dict[str, np.ndarray]:
        s = {name: np.zeros((n, 2), np.int64) for name in ("pk", "wb", "pay", "smax", "in_n", "imax",
                                                            "last_dir", "base_seq")}
        s.update({name: np.zeros((n, 2), np.float64) for name in ("ssum", "ssq", "isum", "isq")})
        s["smin"] = np.full((n, 2), _BIG, np.int64)
        s["imin"] = np.full((n, 2), np.inf)
        s["first_idx"] = np.full((n, 2), -1, np.int64)
        s["fin"] = np.zeros((n, 2), bool)
        s.update({name: np.zeros(n, np.int64) for name in ("first_ts", "last_ts", "first_pkt", "npk", "nrow", "ia_n")})
        s.update({name: np.zeros(n, np.float64) for name in ("ia_sum", "ia_sq", "ia_max")})
        s["ia_min"] = np.full(n, np.inf)
        # answered: a live stream has handed the flow over already (`data.live`; ingest never sets it).
        s.update({name: np.zeros(n, bool) for name in ("rst", "client_lo", "active", "answered")})
        s["flagc"] = np.zeros((n, 8), np.int64)
        s["key"] = np.zeros((n, KEY_WIDTH), np.uint8)
        s["fid"] = np.zeros(n, np.int64)
        return s

    def _rows(self, n: int) -> dict[str, np.ndarray]:
        K, B = self.K, self.B
        # np.zeros maps fresh zero pages: capacity not yet used costs no memory.
        return {"bytes": np.zeros((n, K, B), np.uint8), "sizes": np.zeros((n, K), np.int32),
                "iat": np.zeros((n, K), np.float32), "tcp_flags": np.zeros((n, K), np.uint8)}

    def _new_ids(self, n: int) -> np.ndarray:
        """Flow ids for n new flows (in first-packet order); adds an output page when the last one is full."""
        need = self.n_ids + n
        while need > self.pages[-1][0] + len(self.pages[-1][1]["sizes"]):
            start = self.pages[-1][0] + len(self.pages[-1][1]["sizes"])
            self.pages.append((start, self._rows(self.page_flows or max(start, 1024))))
        ids = np.arange(self.n_ids, need, dtype=np.int64)
        self.n_ids = need
        return ids

    def _write_rows(self, fid: np.ndarray, k: np.ndarray, values: dict) -> None:
        """out[name][fid, k] = values[name], over the output pages."""
        for start, page in self.pages:
            m = (fid >= start) & (fid < start + len(page["sizes"]))
            if m.all():
                for name, v in values.items():
                    page[name][fid - start, k] = v
                return
            if m.any():
                for name, v in values.items():
                    page[name][fid[m] - start, k[m]] = v[m]

    def _grow(self, need: int) -> None:
        new_cap = max(self.cap * 2, self.cap + need, 256)
        fresh = self._fresh(new_cap)
        for k, v in self.s.items():
            fresh[k][:self.cap] = v
        self.s = fresh
        self.free.extend(range(new_cap - 1, self.cap - 1, -1))
        self.cap = new_cap

    def _alloc(self, n: int) -> np.ndarray:
        if n > len(self.free):
            self._grow(n - len(self.free))
        out = np.array(self.free[len(self.free) - n:], np.int64)
        del self.free[len(self.free) - n:]
        return out

    def _release(self, slots: np.ndarray) -> None:
        """Finalise flows in ``slots``: copy them out, then reset and free the slots."""
        if not len(slots):
            return
        s = self.s
        acc = {k: v[slots] for k, v in s.items() if k != "active"}  # fancy indexing copies
        # Keep only what the flow table needs: statistics are final now, accumulators are dropped.
        block = {k: acc[k] for k in _KEEP}
        block["stats"] = tensors.finalize_stats(acc)
        block["fid"] = acc["fid"]
        block["answered"] = acc["answered"]
        del acc
        self.done.append(block)
        # Forget keys whose current flow is one of these slots.
        for slot, kb in zip(slots.tolist(), block["key"].view(f"V{KEY_WIDTH}").ravel().tolist()):
            if self.key2slot.get(kb) == slot:
                del self.key2slot[kb]
        fresh = self._fresh(1)
        for k, v in s.items():
            v[slots] = fresh[k][0]
        self.free.extend(slots.tolist())

    # -- main step --------------------------------------------------------------------------------
    def add(self, batch: capture.PacketBatch, h: capture.Headers, first_index: int) -> None:
        """Add the flow packets of a batch; ``first_index`` is the index of the batch's first packet in the capture."""
        self.recent_ts = np.concatenate([self.recent_ts, np.asarray(batch.ts[-WATERMARK_PACKETS:], np.int64)]
                                        )[-WATERMARK_PACKETS:]
        sel = np.nonzero(h.kind == capture.FLOW)[0]
        if not len(sel):
            return
        s, K = self.s, self.K
        keys, src_lo, first_of, inv, order = self._keys(h, sel)
        m, u = len(order), len(first_of)
        pidx = sel[order]  # packet index in the batch, sorted order
        ts = batch.ts[pidx]
        lo = src_lo[order]
        proto = h.proto[pidx]
        fl = h.flags[pidx]
        g = inv[order]
        gstart = np.ones(m, bool)
        gstart[1:] = g[1:] != g[:-1]
        gpos = np.nonzero(gstart)[0]
        gend = np.append(gpos[1:], m)

        get = self.key2slot.get
        ukeys = keys[first_of].view(f"V{KEY_WIDTH}").ravel().tolist()
        slot_u = np.fromiter((get(k, -1) for k in ukeys), np.int64, u)
        ex = slot_u >= 0
        tcp = proto == 6
        syn = tcp & ((fl & 0x12) == 0x02)
        cont = ex.copy()
        ended = np.zeros(u, bool)  # the key's current flow has ended (RST, or a FIN from each side)
        if ex.any():
            sl = slot_u[ex]
            t0 = ts[gpos[ex]]
            ended[ex] = s["rst"][sl] | s["fin"][sl].all(1)
            cont[ex] = ((t0 - s["last_ts"][sl] <= self.idle) & (t0 - s["first_ts"][sl] <= self.active)
                        & ~(ended[ex] & syn[gpos[ex]]))
        boundary = gstart.copy()
        boundary[1:] |= ts[1:] - ts[:-1] > self.idle
        # Keys that need the packet-by-packet walk: a later SYN, or a flow that outlives the active timeout.
        flow_start = np.where(cont, s["first_ts"][np.maximum(slot_u, 0)], ts[gpos])
        g_last = np.maximum.reduceat(ts, gpos)
        special = g_last - flow_start > self.active
        later_syn = syn & ~gstart
        if later_syn.any():
            # A later SYN can only start a new flow once the flow has ended: keys whose chunk has no FIN or RST
            # and whose continued flow has not ended (SYN retransmissions, the usual case) need no walk.
            fin_or_rst = np.logical_or.reduceat(tcp & ((fl & 0x05) > 0), gpos)
            g_syn = g[later_syn]
            special[g_syn[(fin_or_rst | (cont & ended))[g_syn]]] = True
        self._walk_keys(np.nonzero(special)[0], gpos, gend, cont, slot_u, ts, lo, fl, tcp, boundary)

        # Segments = flows touched by this chunk.
        seg_start = np.nonzero(boundary)[0]
        nseg = len(seg_start)
        seg_of = np.cumsum(boundary) - 1
        seg_end = np.append(seg_start[1:], m)
        seg_len = seg_end - seg_start
        seg_g = g[seg_start]
        seg_cont = gstart[seg_start] & cont[seg_g]
        seg_slot = np.where(seg_cont, slot_u[seg_g], -1)
        new = np.nonzero(~seg_cont)[0]
        if len(new):
            seg_slot[new] = self._alloc(len(new))
            s = self.s  # may have grown
            ns = seg_slot[new]
            s["key"][ns] = keys[order[seg_start[new]]]
            s["client_lo"][ns] = lo[seg_start[new]]
            s["first_ts"][ns] = ts[seg_start[new]]
            s["first_pkt"][ns] = first_index + pidx[seg_start[new]]
            ids = np.empty(len(new), np.int64)
            ids[np.argsort(pidx[seg_start[new]], kind="stable")] = self._new_ids(len(new))
            s["fid"][ns] = ids
            s["active"][ns] = True
        last_seg = np.ones(nseg, bool)
        last_seg[:-1] = seg_g[1:] != seg_g[:-1]
        # Old flows replaced by a new one for the same key, and flows both started and ended in this chunk.
        replaced = slot_u[ex & ~cont]
        closed = seg_slot[~last_seg]
        for gi, sl in zip(seg_g[last_seg & ~seg_cont].tolist(), seg_slot[last_seg & ~seg_cont].tolist()):
            self.key2slot[ukeys[gi]] = sl

        p_slot = seg_slot[seg_of]
        dirn = (lo != s["client_lo"][p_slot]).astype(np.int64)  # 0: client->server, 1: server->client
        pos = np.arange(m) - seg_start[seg_of]
        pkt_idx = s["npk"][p_slot] + pos

        # Inter-arrival time to the flow's previous packet (either direction).
        prev = np.empty(m, np.int64)
        prev[1:] = ts[:-1]
        has_prev = ~boundary
        cs = seg_start[seg_cont]
        prev[cs] = s["last_ts"][seg_slot[seg_cont]]
        has_prev[cs] = True
        iat = np.where(has_prev, (ts - prev) / 1e9, 0.0)

        size = h.ip_size[pidx]
        wire = batch.wirelen[pidx]
        pay = h.payload[pidx]

        # Per (flow, direction) reductions.
        k2 = seg_of * 2 + dirn
        o2 = np.argsort(k2, kind="stable")
        k2s = k2[o2]
        dstart = np.nonzero(np.append(True, k2s[1:] != k2s[:-1]))[0]
        dend = np.append(dstart[1:], m)
        d_slot = seg_slot[k2s[dstart] // 2]
        d_dir = k2s[dstart] % 2
        t2 = ts[o2]
        seen_before = s["pk"][d_slot, d_dir] > 0
        prev2 = np.empty(m, np.int64)
        prev2[1:] = t2[:-1]
        ok2 = np.ones(m, bool)
        ok2[dstart] = seen_before
        prev2[dstart] = s["last_dir"][d_slot, d_dir]
        iat2 = (t2 - prev2) / 1e9
        sz2 = size[o2]
        cnt = dend - dstart
        add = np.add.reduceat
        s["pk"][d_slot, d_dir] += cnt
        s["wb"][d_slot, d_dir] += add(wire[o2], dstart)
        s["pay"][d_slot, d_dir] += add(pay[o2], dstart)
        szf = sz2.astype(np.float64)
        s["ssum"][d_slot, d_dir] += add(szf, dstart)
        s["ssq"][d_slot, d_dir] += add(szf * szf, dstart)
        s["smin"][d_slot, d_dir] = np.minimum(s["smin"][d_slot, d_dir], np.minimum.reduceat(sz2, dstart))
        s["smax"][d_slot, d_dir] = np.maximum(s["smax"][d_slot, d_dir], np.maximum.reduceat(sz2, dstart))
        iv = np.where(ok2, iat2, 0.0)
        s["in_n"][d_slot, d_dir] += add(ok2.astype(np.int64), dstart)
        s["isum"][d_slot, d_dir] += add(iv, dstart)
        s["isq"][d_slot, d_dir] += add(iv * iv, dstart)
        s["imin"][d_slot, d_dir] = np.minimum(s["imin"][d_slot, d_dir],
                                              np.minimum.reduceat(np.where(ok2, iat2, np.inf), dstart))
        s["imax"][d_slot, d_dir] = np.maximum(s["imax"][d_slot, d_dir], np.maximum.reduceat(iv, dstart))
        s["last_dir"][d_slot, d_dir] = np.maximum.reduceat(t2, dstart)
        s["fin"][d_slot, d_dir] |= np.logical_or.reduceat((fl[o2] & 1).astype(bool) & tcp[o2], dstart)

        # TCP sequence bases: the first packet of each direction.
        ip_off, ip_end, l4 = h.ip_off[pidx], h.ip_end[pidx], h.l4[pidx]
        tcp_ok = tcp & (l4 >= 0) & (ip_off + l4 + 12 <= ip_end)
        first_new = dstart[~seen_before]
        fp = o2[first_new]
        fs, fd = d_slot[~seen_before], d_dir[~seen_before]
        s["first_idx"][fs, fd] = pkt_idx[fp]
        seq_first = capture._be32(batch.buf, np.where(tcp_ok[fp], ip_off[fp] + l4[fp] + 4, 0))
        s["base_seq"][fs, fd] = np.where(tcp_ok[fp], seq_first, 0)

        # Per flow reductions.
        ok1 = has_prev
        s["ia_n"][seg_slot] += add(ok1.astype(np.int64), seg_start)
        s["ia_sum"][seg_slot] += add(iat, seg_start)
        s["ia_sq"][seg_slot] += add(iat * iat, seg_start)
        s["ia_min"][seg_slot] = np.minimum(s["ia_min"][seg_slot],
                                           np.minimum.reduceat(np.where(ok1, iat, np.inf), seg_start))
        s["ia_max"][seg_slot] = np.maximum(s["ia_max"][seg_slot], np.maximum.reduceat(iat, seg_start))
        s["flagc"][seg_slot] += add(np.unpackbits(fl[:, None], axis=1, bitorder="little").astype(np.int64),
                                    seg_start, axis=0)
        s["rst"][seg_slot] |= np.logical_or.reduceat((fl & 4).astype(bool) & tcp, seg_start)
        s["last_ts"][seg_slot] = np.maximum(s["last_ts"][seg_slot], np.maximum.reduceat(ts, seg_start))
        s["npk"][seg_slot] += seg_len

        # The first K packets of each flow (with payload_rows: the first K that carry payload) become rows.
        if self.payload_rows:
            has = (pay > 0).astype(np.int64)
            before = np.cumsum(has) - has  # payload packets earlier in this chunk
            row_idx = s["nrow"][p_slot] + before - before[seg_start][seg_of]
            s["nrow"][seg_slot] += add(has, seg_start)
            r = np.nonzero((has > 0) & (row_idx < K))[0]
        else:
            row_idx = pkt_idx
            s["nrow"][seg_slot] += seg_len
            r = np.nonzero(pkt_idx < K)[0]
        if len(r):
            rs, ri, rd = p_slot[r], row_idx[r], dirn[r]
            rel_seq = rel_ack = None
            if self.mask:
                tok = tcp_ok[r]
                base = batch.buf
                at = np.where(tok, ip_off[r] + l4[r], 0)  # only read inside the packet
                seq = capture._be32(base, at + 4)
                ack = capture._be32(base, at + 8)
                rel_seq = np.where(tok, (seq - s["base_seq"][rs, rd]) & 0xFFFFFFFF, 0)
                peer_first = s["first_idx"][rs, 1 - rd]
                ack_ok = tok & (fl[r] & 0x10 > 0) & (peer_first >= 0) & (peer_first < pkt_idx[r])
                rel_ack = np.where(ack_ok, (ack - s["base_seq"][rs, 1 - rd]) & 0xFFFFFFFF, 0)
            rows = self._packet_rows(batch.buf, ip_off[r], ip_end[r], h, pidx[r], proto[r], l4[r], rel_seq, rel_ack)
            self._find_names(batch.buf, s["fid"][rs], ri, proto[r], rd == 0, ip_off[r] + size[r] - pay[r], ip_end[r])
            sz = np.minimum(size[r], np.iinfo(np.int32).max)
            self._write_rows(s["fid"][rs], ri, {"bytes": rows, "sizes": np.where(rd == 0, sz, -sz),
                                                "iat": iat[r], "tcp_flags": fl[r]})

        self._release(np.concatenate([replaced, closed]).astype(np.int64))
        self.now = max(self.now, int(g_last.max()))

    def _packet_rows(self, buf, start, end, h: capture.Headers, pk, proto, l4, rel_seq, rel_ack) -> np.ndarray:
        """Byte rows of packets ``pk`` (indices into ``h``), masked (docs/masking.md) unless masking is off:
        tensors.extract_rows, mask_rows, mask_session_ids, scrub_addresses; compiled where the extension was built."""
        if not self.compiled:
            rows = tensors.extract_rows(buf, start, end, self.B)
            if self.mask:
                tensors.mask_rows(rows, h.ipver[pk], proto, l4, rel_seq, rel_ack)
                tensors.mask_session_ids(rows, proto, l4)
                tensors.scrub_addresses(rows, h.src[pk], h.dst[pk], h.ipver[pk])
            return rows
        rows = np.empty((len(start), self.B), np.uint8)
        as_c, i64 = np.ascontiguousarray, np.int64
        if self.mask:
            masking = (as_c(h.ipver[pk], np.uint8), as_c(proto, np.uint8), as_c(l4, i64), as_c(rel_seq, i64),
                       as_c(rel_ack, i64), as_c(h.src[pk]), as_c(h.dst[pk]))
        else:
            empty = np.zeros(0, np.uint8)
            masking = (empty,) * 7
        capture._capture_c.packet_rows(buf, as_c(start, i64), as_c(end, i64), rows, self.mask, *masking)
        return rows

    def _keys(self, h: capture.Headers, sel: np.ndarray):
        """Keys of the packets ``sel`` and their groups: (keys, src_lo, first row of each distinct key, group of
        each row, rows grouped by key with time order kept inside a key); compiled where the extension was built
        (groups numbered in another order, which the flow table does not depend on)."""
        if not self.compiled:
            keys, src_lo = build_keys(h, sel)
            first_of, inv = _group_keys(keys)
            return keys, src_lo, first_of, inv, np.argsort(inv, kind="stable")
        m = len(sel)
        keys, src_lo = np.empty((m, KEY_WIDTH), np.uint8), np.empty(m, bool)
        inv, order = np.empty(m, np.int64), np.empty(m, np.int64)
        as_c = np.ascontiguousarray
        first_of = capture._capture_c.flow_keys(as_c(sel, np.int64), as_c(h.src), as_c(h.dst), as_c(h.sport, np.int64),
                                                as_c(h.dport, np.int64), as_c(h.proto), as_c(h.vlan, np.int64),
                                                as_c(h.ipver), keys, src_lo, inv, order)
        return keys, src_lo, np.frombuffer(first_of, np.int64), inv, order

    def _find_names(self, buf, fid, k, proto, client, start, end) -> None:
        """Record the server name of flows still without one, from the client's payloads among the first
        NAME_PACKETS packets. A vectorised look at the first payload bytes keeps the Python parsers for packets
        that can hold a name: a TLS/DTLS ClientHello, an HTTP/SSDP request line, a DNS-format question."""
        idx = np.nonzero(client & (k < NAME_PACKETS) & (end - start >= 6) & ((proto == 6) | (proto == 17)))[0]
        if not len(idx):
            return
        at = start[idx]  # only these packets' first payload bytes are read (the packet is >= 6 bytes past them)
        b = [buf[at + j] for j in range(6)]
        tls = (b[0] == 0x16) & (((b[1] == 0x03) & (b[5] == 0x01)) | (b[1] == 0xFE))
        word = (b[0].astype(np.int64) << 24) | (b[1].astype(np.int64) << 16) | (b[2].astype(np.int64) << 8) | b[3]
        http = np.isin(word, names.HTTP_PREFIX_WORDS)  # a request method
        dns = (proto[idx] == 17) & (((b[2] >> 3) & 0x0F) == 0) & (b[4] == 0) & (b[5] >= 1)  # QUERY, 1+ question
        cand = idx[tls | http | dns]
        found = self.names
        if self.compiled:  # every candidate parsed; the first name counts
            fids = fid[cand].tolist()
            as_c = np.ascontiguousarray
            for k, name in capture._capture_c.server_names(buf, as_c(start[cand], np.int64), as_c(end[cand], np.int64),
                                                           as_c(proto[cand], np.uint8)):
                found.setdefault(fids[k], name)
            return
        view = memoryview(buf)  # slices of it are cheaper than numpy slices turned into bytes
        for f, a, e, pr in zip(fid[cand].tolist(), start[cand].tolist(), end[cand].tolist(), proto[cand].tolist()):
            if f in found:
                continue
            name = names.server_name(bytes(view[a:min(e, a + 2048)]), pr)
            if name:
                found[f] = name

    def _walk_keys(self, walk, gpos, gend, cont, slot_u, ts, lo, fl, tcp, boundary) -> None:
        """Mark the flow boundaries of the key groups ``walk`` packet by packet (``_walk``; compiled where the
        extension was built, one call for all of them)."""
        if not len(walk):
            return
        if not self.compiled:
            for gi in walk.tolist():
                self._walk(int(gpos[gi]), int(gend[gi]), bool(cont[gi]), int(slot_u[gi]), ts, lo, fl, tcp, boundary)
            return
        s = self.s
        c = cont[walk]
        slot = np.where(c, slot_u[walk], 0)  # state of the key's current flow (unused where it does not continue)
        as_c = np.ascontiguousarray
        capture._capture_c.walk_keys(
            as_c(ts, np.int64), as_c(lo, bool), as_c(fl, np.uint8), as_c(tcp, bool), boundary,
            as_c(gpos[walk], np.int64), as_c(gend[walk], np.int64), as_c(c, bool), as_c(s["first_ts"][slot]),
            as_c(s["last_ts"][slot]), as_c(s["fin"][slot], bool), as_c(s["rst"][slot], bool),
            as_c(s["client_lo"][slot], bool), self.idle, self.active)

    def _walk(self, a, b, cont, slot, ts, lo, fl, tcp, boundary) -> None:
        """Packet-by-packet flow boundaries for one key (rare: see the module docstring)."""
        s = self.s
        if cont:
            start, last = int(s["first_ts"][slot]), int(s["last_ts"][slot])
            fin = [bool(x) for x in s["fin"][slot]]
            rst, client_lo = bool(s["rst"][slot]), bool(s["client_lo"][slot])
        for i in range(a, b):
            t, li, f = int(ts[i]), bool(lo[i]), int(fl[i])
            is_tcp = bool(tcp[i])
            if i == a:
                newf = not cont
            else:
                syn = is_tcp and (f & 0x12) == 0x02
                newf = (t - last > self.idle or t - start > self.active
                        or (syn and (rst or (fin[0] and fin[1]))))
                boundary[i] = newf
            if newf:
                start, fin, rst, client_lo = t, [False, False], False, li
            last = t
            if is_tcp:
                if f & 1:
                    fin[int(li != client_lo)] = True
                if f & 4:
                    rst = True

    def expire(self) -> None:
        """Finalise flows idle for longer than the idle timeout relative to the watermark (module docstring)."""
        if not len(self.recent_ts) or not self.s:
            return
        s = self.s
        old = np.nonzero(s["active"] & (s["last_ts"] < int(self.recent_ts.min()) - self.idle))[0]
        self._release(old)

    def finish(self) -> dict[str, np.ndarray]:
        """Finalise all flows; return them as column arrays ordered by first packet (= flow id)."""
        self._release(np.nonzero(self.s["active"])[0])
        n = self.n_ids
        done, self.done = self.done, []
        if len(self.pages) == 1:
            page = self.pages[0][1]
            # Views of the page: no copy of the large rows. But a page mostly unused and small enough to come from
            # the heap (not fresh zero pages: its capacity can be real memory) is copied down to its flows, else a
            # corpus of small captures keeps a 2 MB page alive per capture (2,304 Zeek/Suricata captures: 1.3 GB
            # peak RSS instead of 165 MB).
            small = sum(v[:n].nbytes for v in page.values()) < (32 << 20)
            view = 2 * n >= len(page["sizes"]) or not small
            out = {k: v[:n] if view else v[:n].copy() for k, v in page.items()}
        else:
            out = {k: np.concatenate([p[k] for _, p in self.pages])[:n] for k in _ROWS}
        self.pages = [(0, self._rows(0))]
        self.s = {}
        server_name = np.full(n, "", dtype=object)
        for f, name in self.names.items():
            server_name[f] = name
        out["server_name"] = server_name.astype(str) if n else np.zeros(0, "<U1")
        self.names = {}
        if not done:
            fresh = self._fresh(0)
            out.update({k: fresh[k] for k in _KEEP})
            out["stats"] = np.zeros((0, len(tensors.STATS_NAMES)), np.float32)
            return out
        fid = np.concatenate([d["fid"] for d in done])
        for k in (*_KEEP, "stats"):
            v = np.concatenate([d[k] for d in done])
            col = np.empty_like(v)
            col[fid] = v
            out[k] = col
        return out
