"""Flows -> fixed-shape tensors: the packet byte matrix (masked), and the flow statistics.

Masking rules are documented byte by byte in docs/masking.md; keep the two in step, and the compiled copy of the
row functions in _capture_c.c (``packet_rows``, tested byte-equal to these).
"""
from __future__ import annotations

import numpy as np

DIRS = ("c2s", "s2c", "all")
FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")  # TCP flag bits 0..7

STATS_NAMES: tuple[str, ...] = (
    ("duration", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes", "c2s_payload_bytes", "s2c_payload_bytes")
    + tuple(f"{d}_size_{s}" for d in DIRS for s in ("min", "mean", "max", "std"))
    + tuple(f"{d}_iat_{s}" for d in DIRS for s in ("min", "mean", "max", "std"))
    + tuple(f"{f}_count" for f in FLAG_NAMES)
    + ("packets_per_s", "bytes_per_s", "down_up_ratio")
)

# Byte positions zeroed in the network header (relative to its start).
_V4_ZERO = np.array([4, 5, 8, 10, 11, *range(12, 20)])  # IP ID, TTL, header checksum, addresses
_V6_ZERO = np.array([2, 3, 7, *range(8, 40)])  # flow label (low 16 bits), hop limit, addresses
# Transport fields zeroed, relative to the transport header: ports and checksums.
_TCP_ZERO = np.array([0, 1, 2, 3, 16, 17])
_UDP_ZERO = np.array([0, 1, 2, 3, 6, 7])  # also UDP-Lite (136)
_SCTP_ZERO = np.array([0, 1, 2, 3, 8, 9, 10, 11])
_ICMP_ZERO = np.array([2, 3])  # ICMP / ICMPv6 checksum


def extract_rows(buf: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` bytes of ``buf[start:end]`` for every packet, zero-padded: uint8 [n, width]."""
    n_ok = len(buf) - width  # windows starting after this would run past the buffer
    if n_ok < 0 or (start > n_ok).any():
        idx = start[:, None] + np.arange(width)
        valid = idx < end[:, None]
        rows = buf[np.minimum(idx, len(buf) - 1)]
        rows[~valid] = 0
        return rows
    # Copy whole windows through a strided view (no [n, width] index array), then clear past the end.
    rows = np.lib.stride_tricks.sliding_window_view(buf, width)[start]
    short = np.nonzero(end - start < width)[0]
    if len(short):
        rows[short] *= np.arange(width)[None, :] < (end - start)[short, None]
    return rows


def _zero(rows, r, base, cols):
    """rows[r, base + cols] = 0 where inside the row."""
    c = base[:, None] + cols[None, :]
    rr = np.broadcast_to(r[:, None], c.shape)
    ok = (c >= 0) & (c < rows.shape[1])
    rows[rr[ok], c[ok]] = 0


def _put32(rows, r, col, val):
    """Write big-endian uint32 ``val`` at rows[r, col:col+4] where the 4 bytes fit."""
    ok = col + 4 <= rows.shape[1]
    r, col, val = r[ok], col[ok], val[ok]
    for k in range(4):
        rows[r, col + k] = (val >> (24 - 8 * k)) & 0xFF


def mask_rows(rows: np.ndarray, ipver: np.ndarray, proto: np.ndarray, l4: np.ndarray,
              seq: np.ndarray, ack: np.ndarray) -> None:
    """Zero the shortcut fields of packet rows in place (see docs/masking.md).

    ``rows`` start at the IP header; ``l4`` is the transport header offset in the row (-1: none, e.g. a later
    fragment); ``seq``/``ack`` are the relative TCP numbers to write (computed by the flow tracker).
    """
    n = len(rows)
    if not n:
        return
    r = np.arange(n)
    v4 = ipver == 4
    rows[np.ix_(r[v4], _V4_ZERO[_V4_ZERO < rows.shape[1]])] = 0
    v6 = r[~v4]
    if len(v6):
        rows[v6[:, None], _V6_ZERO[None, _V6_ZERO < rows.shape[1]]] = 0
        if rows.shape[1] > 1:
            rows[v6, 1] &= 0xF0  # top 4 bits of the flow label
    has = l4 >= 0
    for p, cols in ((6, _TCP_ZERO), (17, _UDP_ZERO), (136, _UDP_ZERO), (132, _SCTP_ZERO),
                    (1, _ICMP_ZERO), (58, _ICMP_ZERO)):
        m = has & (proto == p)
        if m.any():
            _zero(rows, r[m], l4[m], cols)
    m = has & (proto == 6)
    if m.any():
        _put32(rows, r[m], l4[m] + 4, seq[m])
        _put32(rows, r[m], l4[m] + 8, ack[m])


def _zero_spans(rows, r, start, length) -> None:
    """rows[r[i], start[i]:start[i] + length[i]] = 0, clipped to the row (length <= 40)."""
    width = rows.shape[1]
    for j in range(int(length.max()) if len(length) else 0):
        ok = (j < length) & (start + j < width) & (start + j >= 0)
        rows[r[ok], (start + j)[ok]] = 0


# TLS/DTLS handshake walk (docs/masking.md, "Per-session random values"). Extensions whose value bytes are
# zeroed; their type and length fields, and the length fields inside them, are kept.
EXT_SERVER_NAME, EXT_PADDING, EXT_SESSION_TICKET, EXT_PRE_SHARED_KEY = 0, 21, 35, 41
EXT_COOKIE, EXT_KEY_SHARE, EXT_ESNI, EXT_ECH = 44, 51, 0xFFCE, 0xFE0D
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_HELLO_VERIFY, HS_NEW_SESSION_TICKET, HS_CLIENT_KEY_EXCHANGE = 1, 2, 3, 4, 16
DTLS_VERSIONS = (0xFF, 0xFD, 0xFC)  # second byte of 0xfeff (DTLS 1.0), 0xfefd (1.2), 0xfefc (1.3)


def _mask_handshake(row: bytearray, pay: int, dtls: bool) -> None:
    """Zero the per-session values of the TLS (``dtls`` False: TCP payload at ``pay``) or DTLS (UDP payload at
    ``pay``) handshake record that starts there, in place; the row already starts with a handshake record header
    (checked by the caller). Scalar on purpose: few rows are handshakes, and this is the reference that
    _capture_c.c's ``mask_handshake`` follows line for line.

    Every read is inside the row; no declared length is trusted to be inside the row. Fixed-position fields
    (random, session id, cookies) are zeroed wherever the row holds them; the extension walk stops at the end of
    the row, of the extensions block, of each extension and, for DTLS, of the record's handshake fragment (what
    follows it is another record). A later DTLS fragment of a ticket or client key exchange is zeroed whole (it
    is all ticket or key); later fragments of hellos cannot be parsed alone and are kept.
    """
    w = len(row)

    def zero(a: int, b: int) -> None:  # row[a:b] = 0, clipped to the row
        b = min(b, w)
        if a < b:
            row[a:b] = bytes(b - a)

    def be16(i: int) -> int:
        return row[i] << 8 | row[i + 1]

    def items(q: int, x: int, pre: int, size: int, post: int) -> None:
        """A list of [pre bytes kept][length, size bytes][value][post bytes] up to x: value and post zeroed."""
        while q + pre + size <= x:
            n = row[q + pre] if size == 1 else be16(q + pre)
            a = q + pre + size
            zero(a, min(a + n + post, x))
            q = a + n + post

    if dtls:  # record header 13 bytes (type, version, epoch, sequence, length), handshake header 12
        if pay + 25 > w or row[pay + 3] or row[pay + 4]:
            return  # not epoch 0 (encrypted)
        typ, hs_len, body = row[pay + 13], row[pay + 14] << 16 | be16(pay + 15), pay + 25
        end = min(w, body + (row[pay + 22] << 16 | be16(pay + 23)))  # the fragment's end
        if row[pay + 19] or row[pay + 20] or row[pay + 21]:  # not the message's first fragment
            if typ in (HS_NEW_SESSION_TICKET, HS_CLIENT_KEY_EXCHANGE):
                zero(body, end)
            return
    else:  # record header 5 bytes, handshake header 4
        typ, body, end = row[pay + 5], pay + 9, w
        hs_len = row[pay + 6] << 16 | be16(pay + 7) if pay + 9 <= w else 0
    if typ == HS_HELLO_VERIFY and dtls:
        if body + 2 < w:
            zero(body + 3, body + 3 + row[body + 2])  # cookie
        return
    if typ == HS_NEW_SESSION_TICKET:  # TLS 1.2 / DTLS: lifetime hint (4), ticket length (2), ticket
        if body + 6 <= w:
            zero(body + 6, min(body + 6 + be16(body + 4), end))
        return
    if typ == HS_CLIENT_KEY_EXCHANGE:  # the client's key share: an ECDHE point (1-byte length) or DH/RSA (2)
        if body < w:
            keep = 1 if row[body] == hs_len - 1 else 2
            zero(body + keep, min(body + hs_len, end))
        return
    if typ not in (HS_CLIENT_HELLO, HS_SERVER_HELLO):
        return
    client = typ == HS_CLIENT_HELLO
    zero(body + 2, body + 34)  # random
    s = body + 34
    if s >= w:
        return
    sid = row[s]
    zero(s + 1, s + 1 + min(sid, 32))  # session id (its length byte kept)
    if sid > 32:
        return  # not a hello: nothing after it can be located
    q = s + 1 + sid
    if client and dtls:
        if q >= w:
            return
        zero(q + 1, q + 1 + row[q])  # cookie
        q += 1 + row[q]
    if client:
        if q + 2 > w:
            return
        q += 2 + be16(q)  # cipher suites
        if q >= w:
            return
        q += 1 + row[q]  # compression methods
    else:
        q += 3  # cipher suite, compression method
    if q + 2 > w:
        return
    x_all = min(q + 2 + be16(q), end)
    q += 2
    while q + 4 <= x_all:
        t, n, v = be16(q), be16(q + 2), q + 4
        x = min(v + n, x_all)
        if t == EXT_SERVER_NAME:  # list length, then [name type][length][host name]
            items(v + 2, x, 1, 2, 0)
        elif t == EXT_KEY_SHARE:  # client: list length, then [group][length][key]; server: one entry
            items(v + 2 if client else v, x, 2, 2, 0)
        elif t == EXT_PRE_SHARED_KEY and client:  # [identity length][identity][ticket age (4)]..., binders
            if v + 2 <= x:
                ids_end = v + 2 + be16(v)
                items(v + 2, min(ids_end, x), 0, 2, 4)
                items(ids_end + 2, x, 0, 1, 0)  # [binder length (1)][binder]...
        elif t == EXT_COOKIE:
            items(v, x, 0, 2, 0)
        elif t == EXT_ECH and client:  # outer (type 0): suite (4), config id (1), [enc], [payload]
            if v < x and row[v] == 0:
                items(v + 6, x, 0, 2, 0)
        elif t in (EXT_SESSION_TICKET, EXT_PADDING, EXT_ESNI) or t == EXT_ECH:  # ECH in a HelloRetryRequest
            zero(v, x)
        q = v + n


def _mask_dtls_records(row: bytearray, pay: int) -> None:
    """Every DTLS record of the datagram whose header the row holds (a flight packs several: certificate, client
    key exchange, ticket fragments...): the handshake ones masked (``_mask_handshake``), the others stepped over;
    the walk stops at anything that is not a DTLS record header."""
    w = len(row)
    while pay + 13 <= w and 20 <= row[pay] <= 25 and row[pay + 1] == 0xFE and row[pay + 2] in DTLS_VERSIONS:
        if row[pay] == 0x16:
            _mask_handshake(row, pay, True)
        pay += 13 + (row[pay + 11] << 8 | row[pay + 12])


def mask_session_ids(rows: np.ndarray, proto: np.ndarray, l4: np.ndarray) -> None:
    """Zero per-connection random values that name one session, not the traffic (in place; docs/masking.md):
    TCP timestamp option values (a per-host clock), QUIC long-header connection ids, and in TLS and DTLS
    handshakes the hello random and session id, the DTLS cookie, the values of the server_name, key_share,
    pre_shared_key, session_ticket, cookie, ECH/ESNI and padding extensions, session tickets and the client's
    key exchange. A model that sees them can memorise training flows one by one (or read the server name that is
    its own explicit input).
    """
    n, width = rows.shape
    r_all = np.arange(n)
    tcp = (proto == 6) & (l4 >= 0) & (l4 + 13 <= width)
    t = r_all[tcp]
    hs_rows, hs_pay, hs_dtls = [], [], []
    if len(t):
        base = l4[t]
        hlen = (rows[t, base + 12] >> 4).astype(np.int64) * 4
        pos, end = base + 20, np.minimum(base + hlen, width)
        live = pos < end
        for _ in range(40):  # at most 40 option bytes
            i = np.nonzero(live)[0]
            if not len(i):
                break
            p = pos[i]
            kind = rows[t[i], p]
            ln = np.where(p + 1 < width, rows[t[i], np.minimum(p + 1, width - 1)], 0).astype(np.int64)
            ts = (kind == 8) & (ln == 10)
            if ts.any():
                _zero_spans(rows, t[i][ts], p[ts] + 2, np.full(int(ts.sum()), 8))
            nop = kind == 1
            pos[i] = p + np.where(nop, 1, np.maximum(ln, 2))
            live[i] = (kind != 0) & (nop | (ln >= 2)) & (pos[i] < end[i])
        # TLS handshake records that start the payload
        pay = base + hlen
        hs = (pay + 6 <= width) & (hlen >= 20)
        hs[hs] &= (rows[t[hs], pay[hs]] == 0x16) & (rows[t[hs], pay[hs] + 1] == 0x03)
        hs_rows.append(t[hs]), hs_pay.append(pay[hs]), hs_dtls.append(np.zeros(int(hs.sum()), bool))
    udp = (proto == 17) & (l4 >= 0) & (l4 + 8 + 6 <= width)
    u = r_all[udp]
    if len(u):
        p = l4[u] + 8
        quic = (rows[u, p] & 0xC0) == 0xC0  # long header
        version = (rows[u, p + 1].astype(np.int64) | rows[u, p + 2] | rows[u, p + 3] | rows[u, p + 4]) > 0
        dlen = rows[u, p + 5].astype(np.int64)
        quic = quic & version & (dlen <= 20)
        if quic.any():
            q, pq, dl = u[quic], p[quic], dlen[quic]
            _zero_spans(rows, q, pq + 6, dl)
            at = pq + 6 + dl
            ok = at < width
            slen = np.zeros(len(q), np.int64)
            slen[ok] = rows[q[ok], at[ok]]
            ok &= slen <= 20
            _zero_spans(rows, q[ok], at[ok] + 1, slen[ok])
        # DTLS handshake records that start the payload
        dtls = (rows[u, p] == 0x16) & (rows[u, p + 1] == 0xFE) & np.isin(rows[u, p + 2], DTLS_VERSIONS)
        hs_rows.append(u[dtls]), hs_pay.append(p[dtls]), hs_dtls.append(np.ones(int(dtls.sum()), bool))
    for r, pay, dt in zip(np.concatenate(hs_rows or [np.zeros(0, np.int64)]).tolist(),
                          np.concatenate(hs_pay or [np.zeros(0, np.int64)]).tolist(),
                          np.concatenate(hs_dtls or [np.zeros(0, bool)]).tolist()):
        row = bytearray(rows[r].tobytes())
        if dt:
            _mask_dtls_records(row, pay)
        else:
            _mask_handshake(row, pay, False)
        rows[r] = np.frombuffer(row, np.uint8)


_SCRUB_FROM = 20  # IPv4 header end; IPv6 addresses (bytes 8-39) are zeroed by mask_rows before the scrub


def scrub_addresses(rows: np.ndarray, src: np.ndarray, dst: np.ndarray, ipver: np.ndarray) -> None:
    """Zero every copy of the packet's own two IP addresses anywhere in its row, in place.

    Protocols repeat the endpoints in their payload (DHCP, ICMP errors quoting the original header, STUN, FTP
    PORT in binary, SIP over some encodings...); the header fields alone would leave these shortcuts.
    IPv4 addresses are matched as 4-byte words; IPv6 ones by their first 4 bytes, then verified in full.
    """
    n, width = rows.shape
    if not n or width < 4:
        return
    for addr in (src, dst):
        # 4-byte words compared in the machine's byte order on both sides: equal bytes, equal words, no swap.
        key = np.ascontiguousarray(addr[:, :4]).view(np.uint32).ravel()
        # 0.0.0.0 and 255.255.255.255 identify nothing (and zero/0xff runs are common): left alone.
        ok = (key != 0) & (key != 0xFFFFFFFF)
        hits = []
        for a in range(4):  # each byte alignment: the row seen as 32-bit words
            a += _SCRUB_FROM  # the address fields before this are zeroed already
            q = (width - a) // 4
            if q <= 0:
                continue
            eq = rows[:, a:a + 4 * q].view(np.uint32) == key[:, None]
            eq &= ok[:, None]
            flat = np.flatnonzero(eq)  # row-major: hits ordered by row, then position
            if len(flat):
                rr, cc = np.divmod(flat, q)
                hits.append((rr, a + 4 * cc))
        for hr, hc in hits:
            v4 = ipver[hr] == 4
            for k in range(4):
                rows[hr[v4], hc[v4] + k] = 0
            for i, c in zip(hr[~v4].tolist(), hc[~v4].tolist()):
                if c + 16 <= width and (rows[i, c:c + 16] == addr[i]).all():
                    rows[i, c:c + 16] = 0


def finalize_stats(acc: dict) -> np.ndarray:
    """Flow statistics float32 [n, len(STATS_NAMES)] from the tracker's accumulators.

    ``acc`` holds per-direction arrays [n, 2] (pk, wb, pay, ssum, ssq, smin, smax, in_n, isum, isq, imin, imax),
    per-flow arrays ia_n, ia_sum, ia_sq, ia_min, ia_max, first_ts, last_ts (ns) and flag counts [n, 8].
    Sizes are IP lengths in bytes, inter-arrival times in seconds, duration in seconds.
    """
    pk = acc["pk"].astype(np.float64)
    n = len(pk)
    out = np.zeros((n, len(STATS_NAMES)), np.float64)
    dur = (acc["last_ts"] - acc["first_ts"]) / 1e9
    col = 0

    def put(v):
        nonlocal col
        out[:, col] = v
        col += 1

    put(dur)
    put(pk[:, 0]), put(pk[:, 1])
    put(acc["wb"][:, 0]), put(acc["wb"][:, 1])
    put(acc["pay"][:, 0]), put(acc["pay"][:, 1])

    def moments(cnt, s, sq, mn, mx, scale):
        safe = np.maximum(cnt, 1)
        mean = s / safe
        var = np.maximum(sq / safe - mean * mean, 0.0)
        have = cnt > 0
        return [np.where(have, mn, 0) * scale, mean * scale, np.where(have, mx, 0) * scale, np.sqrt(var) * scale]

    for d in (0, 1):
        for v in moments(pk[:, d], acc["ssum"][:, d], acc["ssq"][:, d], acc["smin"][:, d], acc["smax"][:, d], 1.0):
            put(v)
    for v in moments(pk.sum(1), acc["ssum"].sum(1), acc["ssq"].sum(1), acc["smin"].min(1), acc["smax"].max(1), 1.0):
        put(v)
    for d in (0, 1):
        for v in moments(acc["in_n"][:, d], acc["isum"][:, d], acc["isq"][:, d], acc["imin"][:, d],
                         acc["imax"][:, d], 1.0):
            put(v)
    for v in moments(acc["ia_n"], acc["ia_sum"], acc["ia_sq"], acc["ia_min"], acc["ia_max"], 1.0):
        put(v)
    for b in range(8):
        put(acc["flagc"][:, b])
    span = np.where(dur > 0, dur, np.nan)
    tot_b = acc["wb"].sum(1)
    put(np.nan_to_num(pk.sum(1) / span))
    put(np.nan_to_num(tot_b / span))
    put(acc["wb"][:, 1] / np.maximum(acc["wb"][:, 0], 1))
    assert col == len(STATS_NAMES)
    return out.astype(np.float32)
