/* The per-packet loops of reading a capture, compiled: pcap record boundaries, link/IP/L4 header fields, and the
 * flow-boundary walk of the few keys the numpy flow tracker cannot settle in bulk.
 *
 * pclip_jax/data/capture.py and flows.py hold the reference implementations (Python loops, numpy) and use them
 * when this module was not built (no C compiler at install time). This file follows them step for step;
 * tests/test_capture.py and tests/test_flows.py check that both give identical results on every real capture of
 * ../shared and on mutated ones. Rare encapsulations (MPLS, PPPoE, IPv6 extension headers, IP-in-IP) are marked
 * with kind 255 and left to capture.py's per-packet Python path, exactly as in the numpy version.
 *
 * Reads past a packet's captured bytes are allowed here as in the numpy version (the chunk carries zero padding,
 * capture._PAD bytes); reads past the whole buffer return 0 instead of crashing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------------------- */
/* Record boundaries */

static uint32_t read_u32(const unsigned char *p, int big_endian) {
    if (big_endian)
        return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | (uint32_t)p[0];
}

/* (bytes of out[:count] as int64, stop) for Python; frees out */
static PyObject *offsets_and_stop(int64_t *out, Py_ssize_t count, int64_t stop) {
    PyObject *offsets = PyBytes_FromStringAndSize((const char *)out, count * (Py_ssize_t)sizeof(int64_t));
    PyMem_Free(out);
    if (offsets == NULL)
        return NULL;
    return Py_BuildValue("(NL)", offsets, (long long)stop);
}

/* record_offsets(buffer, n, big_endian) -> (bytes of int64 offsets, stop)
 *
 * Walks 16-byte pcap record headers from offset 0 of buffer[:n]: a record is taken when all of it lies within n
 * bytes; stop is the offset of the first record not taken (a partial record the next chunk completes, or n).
 */
static PyObject *record_offsets(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t n;
    int big_endian;
    if (!PyArg_ParseTuple(args, "y*np", &view, &n, &big_endian))
        return NULL;
    if (n < 0 || n > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "record_offsets: n outside the buffer");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t cap = n / 16 + 1; /* a record is at least 16 bytes */
    int64_t *out = (int64_t *)PyMem_Malloc((size_t)cap * sizeof(int64_t));
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    int64_t pos = 0;
    Py_BEGIN_ALLOW_THREADS
    while (pos + 16 <= (int64_t)n) {
        int64_t next = pos + 16 + (int64_t)read_u32(data + pos + 8, big_endian);
        if (next > (int64_t)n)
            break;
        out[count++] = pos;
        pos = next;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return offsets_and_stop(out, count, pos);
}

/* epb_run(buffer, pos, n, big_endian, max_len) -> (bytes of int64 offsets, stop)
 *
 * pcapng: the run of enhanced packet blocks (type 6) starting at pos that capture._read_pcapng would accept one by
 * one (length >= 12, a multiple of 4, <= max_len, wholly within n bytes, trailing length equal); stop is the first
 * block it does not take, which capture.py then handles (other block types, damage, a block the next chunk
 * completes) with its own checks and messages.
 */
static PyObject *epb_run(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos0, n, max_len;
    int big_endian;
    if (!PyArg_ParseTuple(args, "y*nnpn", &view, &pos0, &n, &big_endian, &max_len))
        return NULL;
    if (n < 0 || n > view.len || pos0 < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "epb_run: positions outside the buffer");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t cap = (n - pos0) / 12 + 1; /* a block is at least 12 bytes */
    int64_t *out = (int64_t *)PyMem_Malloc((size_t)(cap > 0 ? cap : 1) * sizeof(int64_t));
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t count = 0;
    int64_t pos = pos0;
    Py_BEGIN_ALLOW_THREADS
    while (pos + 12 <= (int64_t)n && count < cap) {
        int64_t btype = read_u32(data + pos, big_endian), blen = read_u32(data + pos + 4, big_endian);
        if (btype != 6 || blen < 12 || blen % 4 || blen > max_len || pos + blen > (int64_t)n ||
            read_u32(data + pos + blen - 4, big_endian) != blen)
            break;
        out[count++] = pos;
        pos += blen;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return offsets_and_stop(out, count, pos);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Headers */

enum { FLOW = 0, LATER_FRAGMENT = 1, NON_IP = 2, MALFORMED = 3, SLOW = 255 };

typedef struct {
    const unsigned char *buf;
    int64_t len;
} Bytes;

static inline int64_t u8(Bytes b, int64_t i) { return (i >= 0 && i < b.len) ? b.buf[i] : 0; }
static inline int64_t be16(Bytes b, int64_t i) { return (u8(b, i) << 8) | u8(b, i + 1); }
static inline int is_tpid(int64_t et) { return et == 0x8100 || et == 0x88A8 || et == 0x9100; }
static inline int is_ipv6_ext(int64_t p) {
    return p == 0 || p == 43 || p == 44 || p == 60 || p == 51 || p == 135 || p == 139 || p == 140;
}

/* The output arrays of one batch (capture.Headers), plus the link-layer results the Python slow path needs. */
typedef struct {
    uint8_t *kind, *ipver, *proto, *flags, *src, *dst;
    int64_t *ip_off, *ip_end, *ip_size, *l4, *sport, *dport, *vlan, *payload, *l3, *etype;
} Out;

static inline int64_t le16(Bytes b, int64_t i) { return u8(b, i) | (u8(b, i + 1) << 8); }
static inline int64_t le32(Bytes b, int64_t i) { return le16(b, i) | (le16(b, i + 2) << 16); }

/* An 802.2 LLC/SNAP header at q: payload offset and ethertype, or l3 = -1 (capture._llc_snap). */
static void llc_snap(Bytes b, int64_t q, int64_t end, int64_t *l3, int64_t *etype) {
    if (q + 8 > end || u8(b, q) != 0xAA || u8(b, q + 1) != 0xAA || u8(b, q + 2) != 0x03)
        return;
    *l3 = q + 8;
    *etype = be16(b, q + 6);
}

/* FDDI, 802.11 (with or without radiotap) and NFLOG: capture._variable_link_layer, line for line. */
static void variable_link_layer(Bytes b, int64_t off, int64_t end, int32_t lt, int64_t *l3, int64_t *etype) {
    if (lt == 239) { /* NFLOG */
        if (off + 4 > end)
            return;
        int64_t family = u8(b, off), fam_etype = family == 2 ? 0x0800 : (family == 10 ? 0x86DD : 0);
        for (int64_t p = off + 4; p + 4 <= end;) {
            int64_t length = le16(b, p), type;
            if (length >= 4 && p + length <= end) {
                type = le16(b, p + 2);
            } else {
                length = be16(b, p);
                if (length < 4 || p + length > end)
                    return;
                type = be16(b, p + 2);
            }
            if (type == 9) {
                *l3 = p + 4;
                *etype = fam_etype;
                return;
            }
            p += (length + 3) & ~(int64_t)3;
        }
        return;
    }
    if (lt == 10) { /* FDDI */
        llc_snap(b, off + 13, end, l3, etype);
        return;
    }
    int64_t p = off, flags = 0;
    if (lt == 127) { /* radiotap */
        if (off + 8 > end)
            return;
        p = off + le16(b, off + 2);
        if (p < off + 8 || p + 24 > end)
            return;
        int64_t present = le32(b, off + 4), q = off + 8;
        while ((le32(b, q - 4) & 0x80000000) && q + 4 <= p)
            q += 4;
        if (present & 1)
            q = off + ((q - off + 7) & ~(int64_t)7) + 8;
        if ((present & 2) && q < p)
            flags = u8(b, q);
    }
    if (p + 24 > end)
        return;
    int64_t fc0 = u8(b, p), fc1 = u8(b, p + 1);
    if (((fc0 >> 2) & 3) != 2 || (fc1 & 0x40) || ((fc0 >> 4) & 4))
        return;
    int64_t header = 24 + ((fc1 & 3) == 3 ? 6 : 0);
    if ((fc0 >> 4) & 8)
        header += 2 + ((fc1 & 0x80) ? 4 : 0);
    if (flags & 0x20)
        header = (header + 3) & ~(int64_t)3;
    llc_snap(b, p + header, end, l3, etype);
}

/* capture.parse_headers' link-layer step for packet i: IP header offset (-1: none) and ethertype-like value. */
static void link_layer(Bytes b, int64_t off, int64_t end, int32_t lt, int64_t *l3, int64_t *etype, int64_t *vlan,
                       int *slow) {
    *l3 = -1;
    *etype = 0;
    *vlan = 0;
    *slow = 0;
    switch (lt) {
    case 1: { /* Ethernet, VLAN tags (outer id kept), up to 4 more stacked tags skipped */
        int64_t p = off + 12, et = be16(b, p);
        if (is_tpid(et)) {
            *vlan = be16(b, p + 2) & 0x0FFF;
            for (int i = 0; i < 4; i++) {
                p += 4;
                et = be16(b, p);
                if (!is_tpid(et))
                    break;
            }
        }
        *l3 = p + 2;
        *etype = et;
        *slow = (et == 0x8847 || et == 0x8848 || et == 0x8864);
        break;
    }
    case 101: case 12: case 14: case 228: case 229: /* raw IP */
        *l3 = off;
        break;
    case 113: /* Linux cooked v1 */
        *l3 = off + 16;
        *etype = be16(b, off + 14);
        break;
    case 276: /* Linux cooked v2 */
        *l3 = off + 20;
        *etype = be16(b, off);
        break;
    case 0: case 108: { /* BSD loopback: address family, host order (NULL) or network order (LOOP) */
        int64_t le = u8(b, off) | (u8(b, off + 1) << 8), be = be16(b, off + 2);
        int64_t fam = lt == 108 ? be : (le != 0 ? le : be);
        *l3 = off + 4;
        *etype = fam == 2 ? 0x0800 : ((fam == 10 || fam == 24 || fam == 28 || fam == 30) ? 0x86DD : -1);
        break;
    }
    case 9: case 50: case 104: { /* PPP, PPP in HDLC framing, Cisco HDLC */
        int64_t p = off;
        int hdlc = u8(b, p) == 0xFF && u8(b, p + 1) == 0x03;
        int chdlc = lt == 104;
        p += (chdlc || hdlc) ? 2 : 0;
        int64_t pr = be16(b, p);
        *l3 = p + 2;
        *etype = chdlc ? pr : (pr == 0x21 ? 0x0800 : (pr == 0x57 ? 0x86DD : -1));
        break;
    }
    case 10: case 105: case 127: case 239: /* FDDI, Wi-Fi, radiotap, NFLOG: variable-length link headers */
        variable_link_layer(b, off, end, lt, l3, etype);
        if (*l3 < 0)
            *etype = 0;
        *slow = (*etype == 0x8847 || *etype == 0x8848 || *etype == 0x8864);
        break;
    default:
        break;
    }
}

/* capture._parse_ip + capture._parse_l4 for packet i whose IP header starts at p. */
static void ip_and_l4(Bytes b, Py_ssize_t i, int64_t p, int64_t end, int64_t wire_ip, Out *o) {
    int64_t ver = u8(b, p) >> 4, avail = end - p;
    int v4 = ver == 4;
    int64_t ihl = v4 ? (u8(b, p) & 15) * 4 : 40;
    int64_t tot = v4 ? be16(b, p + 2) : be16(b, p + 4) + 40;
    if (tot < ihl || (v4 && tot == 0) || (!v4 && tot == 40 && wire_ip > 40)) /* TSO / jumbo: wire length */
        tot = wire_ip;
    int64_t proto = v4 ? u8(b, p + 9) : u8(b, p + 6);
    int64_t frag_off = (v4 ? be16(b, p + 6) : 0) & 0x1FFF;
    int bad = avail < (v4 ? 20 : 40) || (v4 && ihl < 20);
    int k = bad ? MALFORMED : FLOW;
    if (!bad && v4 && frag_off > 0)
        k = LATER_FRAGMENT;
    if (!bad && ((!v4 && is_ipv6_ext(proto)) || proto == 4 || proto == 41))
        k = SLOW;
    o->kind[i] = (uint8_t)k;
    o->ip_off[i] = p;
    int64_t span = avail < tot ? avail : tot;
    o->ip_end[i] = p + (span > 0 ? span : 0);
    o->ipver[i] = (uint8_t)ver;
    o->ip_size[i] = tot;
    o->proto[i] = (uint8_t)proto;
    uint8_t *src = o->src + 16 * i, *dst = o->dst + 16 * i;
    if (v4) {
        for (int j = 0; j < 4; j++) {
            src[j] = (uint8_t)u8(b, p + 12 + j);
            dst[j] = (uint8_t)u8(b, p + 16 + j);
        }
    } else {
        for (int j = 0; j < 16; j++) {
            src[j] = (uint8_t)u8(b, p + 8 + j);
            dst[j] = (uint8_t)u8(b, p + 24 + j);
        }
    }
    int ok = k == FLOW;
    int64_t l4 = p + ihl;
    int tcp = ok && proto == 6 && avail >= ihl + 14;
    int udp = ok && (proto == 17 || proto == 132 || proto == 136) && avail >= ihl + 4;
    o->sport[i] = (tcp || udp) ? be16(b, l4) : 0;
    o->dport[i] = (tcp || udp) ? be16(b, l4 + 2) : 0;
    o->flags[i] = tcp ? (uint8_t)u8(b, l4 + 13) : 0;
    int64_t hl = proto == 6 ? (tcp ? (u8(b, l4 + 12) >> 4) * 4 : 20) : (proto == 17 ? 8 : 0);
    o->l4[i] = ok ? ihl : -1;
    int64_t pay = tot - ihl - hl;
    o->payload[i] = pay > 0 ? pay : 0;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t want_len, const char *name) {
    if (PyObject_GetBuffer(obj, view, writable ? (PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (want_len >= 0 && view->len != want_len) {
        PyErr_Format(PyExc_ValueError, "parse_headers: %s has %zd bytes, expected %zd", name, view->len, want_len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void release_buffers(Py_buffer *v, int got) {
    for (int j = 0; j < got; j++)
        PyBuffer_Release(&v[j]);
}

/* None on success (ok), NULL with the error set otherwise; the call's buffers are released either way */
static PyObject *release_and_return(Py_buffer *v, int got, int ok) {
    release_buffers(v, got);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* parse_headers(buf, off, caplen, wirelen, linktype, kind, ip_off, ip_end, ipver, ip_size, proto, l4, src, dst,
 *               sport, dport, vlan, flags, payload, l3, etype)
 *
 * Inputs: buf (uint8), off/caplen/wirelen (int64 [n]), linktype (int32 [n]). Outputs (C-contiguous, written in
 * place; the caller initialises them as capture._ip_fields does): the capture.Headers arrays, and l3/etype
 * (int64 [n]) for the packets marked kind 255 (capture._parse_slow's arguments).
 */
static PyObject *parse_headers(PyObject *self, PyObject *args) {
    static const char *names[] = {"buf", "off", "caplen", "wirelen", "linktype", "kind", "ip_off", "ip_end",
                                  "ipver", "ip_size", "proto", "l4", "src", "dst", "sport", "dport", "vlan",
                                  "flags", "payload", "l3", "etype"};
    enum { NARGS = 21 };
    /* element sizes; 0 = any length (buf), 16 = 16 bytes per packet (addresses) */
    static const int esize[NARGS] = {0, 8, 8, 8, 4, 1, 8, 8, 1, 8, 1, 8, 16, 16, 8, 8, 8, 1, 8, 8, 8};
    if (PyTuple_GET_SIZE(args) != NARGS) {
        PyErr_Format(PyExc_TypeError, "parse_headers takes %d arguments", NARGS);
        return NULL;
    }
    Py_buffer v[NARGS];
    int got = 0;
    PyObject *off_obj = PyTuple_GET_ITEM(args, 1);
    Py_buffer probe;
    if (get_buffer(off_obj, &probe, 0, -1, "off") < 0)
        return NULL;
    Py_ssize_t n = probe.len / 8;
    PyBuffer_Release(&probe);
    for (; got < NARGS; got++) {
        Py_ssize_t want = esize[got] ? (Py_ssize_t)esize[got] * n : -1;
        if (get_buffer(PyTuple_GET_ITEM(args, got), &v[got], got >= 5, want, names[got]) < 0)
            goto fail;
    }
    Bytes b = {(const unsigned char *)v[0].buf, (int64_t)v[0].len};
    const int64_t *off = v[1].buf, *caplen = v[2].buf, *wirelen = v[3].buf;
    const int32_t *lt = v[4].buf;
    Out o = {.kind = v[5].buf, .ip_off = v[6].buf, .ip_end = v[7].buf, .ipver = v[8].buf, .ip_size = v[9].buf,
             .proto = v[10].buf, .l4 = v[11].buf, .src = v[12].buf, .dst = v[13].buf, .sport = v[14].buf,
             .dport = v[15].buf, .vlan = v[16].buf, .flags = v[17].buf, .payload = v[18].buf, .l3 = v[19].buf,
             .etype = v[20].buf};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t l3, etype, vlan, end = off[i] + caplen[i];
        int slow;
        link_layer(b, off[i], end, lt[i], &l3, &etype, &vlan, &slow);
        o.vlan[i] = vlan;
        o.l3[i] = l3;
        o.etype[i] = etype;
        o.kind[i] = NON_IP;
        if (slow) { /* MPLS / PPPoE: the Python path */
            o.kind[i] = SLOW;
            continue;
        }
        if (l3 < 0 || l3 >= end)
            continue;
        int64_t ver = u8(b, l3) >> 4;
        int is_ip = (etype == 0x0800 && ver == 4) || (etype == 0x86DD && ver == 6) ||
                    (etype == 0 && (ver == 4 || ver == 6));
        if (is_ip)
            ip_and_l4(b, i, l3, end, wirelen[i] - (l3 - off[i]), &o);
    }
    Py_END_ALLOW_THREADS
    return release_and_return(v, got, 1);
fail:
    return release_and_return(v, got, 0);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Packet rows: tensors.extract_rows, then tensors.mask_rows, mask_session_ids and scrub_addresses, row by row */

static void zero_at(uint8_t *row, Py_ssize_t w, int64_t col) {
    if (col >= 0 && col < w)
        row[col] = 0;
}

static void zero_span(uint8_t *row, Py_ssize_t w, int64_t start, int64_t len) {
    for (int64_t j = 0; j < len; j++)
        zero_at(row, w, start + j);
}

static void put32(uint8_t *row, Py_ssize_t w, int64_t col, int64_t val) {
    if (col + 4 > w)
        return;
    for (int k = 0; k < 4; k++)
        row[col + k] = (uint8_t)((val >> (24 - 8 * k)) & 0xFF);
}

static void mask_row(uint8_t *row, Py_ssize_t w, int ipver, int proto, int64_t l4, int64_t seq, int64_t ack) {
    static const int v4_zero[] = {4, 5, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
    static const int tcp_zero[] = {0, 1, 2, 3, 16, 17}, udp_zero[] = {0, 1, 2, 3, 6, 7};
    static const int sctp_zero[] = {0, 1, 2, 3, 8, 9, 10, 11}, icmp_zero[] = {2, 3};
    if (ipver == 4) { /* IP ID, TTL, header checksum, addresses */
        for (size_t k = 0; k < sizeof v4_zero / sizeof *v4_zero; k++)
            zero_at(row, w, v4_zero[k]);
    } else { /* flow label, hop limit, addresses */
        zero_at(row, w, 2);
        zero_at(row, w, 3);
        zero_at(row, w, 7);
        zero_span(row, w, 8, 32);
        if (w > 1)
            row[1] &= 0xF0;
    }
    if (l4 < 0)
        return;
    const int *cols = NULL;
    size_t ncols = 0;
    if (proto == 6)
        cols = tcp_zero, ncols = 6;
    else if (proto == 17 || proto == 136)
        cols = udp_zero, ncols = 6;
    else if (proto == 132)
        cols = sctp_zero, ncols = 8;
    else if (proto == 1 || proto == 58)
        cols = icmp_zero, ncols = 2;
    for (size_t k = 0; k < ncols; k++)
        zero_at(row, w, l4 + cols[k]);
    if (proto == 6) {
        put32(row, w, l4 + 4, seq);
        put32(row, w, l4 + 8, ack);
    }
}

/* row[a:b] = 0, clipped to the row */
static void zero_range(uint8_t *row, Py_ssize_t w, int64_t a, int64_t b) {
    if (b > w)
        b = w;
    if (a < 0)
        a = 0;
    if (a < b)
        memset(row + a, 0, (size_t)(b - a));
}

static int64_t rd16(const uint8_t *row, int64_t i) { return ((int64_t)row[i] << 8) | row[i + 1]; }

/* tensors._mask_handshake's items: a list of [pre bytes kept][length, size bytes][value][post bytes] up to x */
static void hs_items(uint8_t *row, Py_ssize_t w, int64_t q, int64_t x, int pre, int size, int post) {
    while (q + pre + size <= x) {
        int64_t n = size == 1 ? row[q + pre] : rd16(row, q + pre), a = q + pre + size;
        zero_range(row, w, a, a + n + post < x ? a + n + post : x);
        q = a + n + post;
    }
}

/* tensors._mask_handshake: per-session values of the TLS (dtls 0: TCP payload at pay) or DTLS handshake record
 * starting at pay; every read inside the row (x_all, x and the item bounds are all <= w) */
static void mask_handshake(uint8_t *row, Py_ssize_t w, int64_t pay, int dtls) {
    int typ;
    int64_t hs_len, body, end;
    if (dtls) {
        if (pay + 25 > w || row[pay + 3] || row[pay + 4]) /* not epoch 0 */
            return;
        typ = row[pay + 13];
        hs_len = ((int64_t)row[pay + 14] << 16) | rd16(row, pay + 15);
        body = pay + 25;
        end = body + (((int64_t)row[pay + 22] << 16) | rd16(row, pay + 23));
        if (end > w)
            end = w;
        if (row[pay + 19] || row[pay + 20] || row[pay + 21]) { /* a later fragment: tickets and keys zeroed whole */
            if (typ == 4 || typ == 16)
                zero_range(row, w, body, end);
            return;
        }
    } else {
        typ = row[pay + 5];
        body = pay + 9;
        end = w;
        hs_len = pay + 9 <= w ? ((int64_t)row[pay + 6] << 16) | rd16(row, pay + 7) : 0;
    }
    if (typ == 3 && dtls) { /* HelloVerifyRequest: cookie */
        if (body + 2 < w)
            zero_range(row, w, body + 3, body + 3 + row[body + 2]);
        return;
    }
    if (typ == 4) { /* NewSessionTicket: lifetime hint (4), ticket length (2), ticket */
        if (body + 6 <= w) {
            int64_t b = body + 6 + rd16(row, body + 4);
            zero_range(row, w, body + 6, b < end ? b : end);
        }
        return;
    }
    if (typ == 16) { /* ClientKeyExchange: after a 1-byte (ECDHE point) or 2-byte length */
        if (body < w) {
            int64_t keep = row[body] == hs_len - 1 ? 1 : 2, b = body + hs_len;
            zero_range(row, w, body + keep, b < end ? b : end);
        }
        return;
    }
    if (typ != 1 && typ != 2)
        return;
    int client = typ == 1;
    zero_range(row, w, body + 2, body + 34); /* random */
    int64_t s = body + 34;
    if (s >= w)
        return;
    int64_t sid = row[s];
    zero_range(row, w, s + 1, s + 1 + (sid < 32 ? sid : 32)); /* session id */
    if (sid > 32)
        return;
    int64_t q = s + 1 + sid;
    if (client && dtls) { /* cookie */
        if (q >= w)
            return;
        int64_t c = row[q];
        zero_range(row, w, q + 1, q + 1 + c);
        q += 1 + c;
    }
    if (client) {
        if (q + 2 > w)
            return;
        q += 2 + rd16(row, q); /* cipher suites */
        if (q >= w)
            return;
        q += 1 + row[q]; /* compression methods */
    } else {
        q += 3;
    }
    if (q + 2 > w)
        return;
    int64_t x_all = q + 2 + rd16(row, q);
    if (x_all > end)
        x_all = end;
    q += 2;
    while (q + 4 <= x_all) {
        int64_t t = rd16(row, q), n = rd16(row, q + 2), v = q + 4, x = v + n < x_all ? v + n : x_all;
        if (t == 0) { /* server_name */
            hs_items(row, w, v + 2, x, 1, 2, 0);
        } else if (t == 51) { /* key_share */
            hs_items(row, w, client ? v + 2 : v, x, 2, 2, 0);
        } else if (t == 41 && client) { /* pre_shared_key: identities (+ ticket age), binders */
            if (v + 2 <= x) {
                int64_t ids_end = v + 2 + rd16(row, v);
                hs_items(row, w, v + 2, ids_end < x ? ids_end : x, 0, 2, 4);
                hs_items(row, w, ids_end + 2, x, 0, 1, 0);
            }
        } else if (t == 44) { /* cookie */
            hs_items(row, w, v, x, 0, 2, 0);
        } else if (t == 0xFE0D && client) { /* ECH outer: suite, config id, enc, payload */
            if (v < x && row[v] == 0)
                hs_items(row, w, v + 6, x, 0, 2, 0);
        } else if (t == 35 || t == 21 || t == 0xFFCE || t == 0xFE0D) { /* session_ticket, padding, ESNI, HRR ECH */
            zero_range(row, w, v, x);
        }
        q = v + n;
    }
}

/* tensors._mask_dtls_records: every DTLS record whose header the row holds */
static void mask_dtls_records(uint8_t *row, Py_ssize_t w, int64_t pay) {
    while (pay + 13 <= w && row[pay] >= 20 && row[pay] <= 25 && row[pay + 1] == 0xFE &&
           (row[pay + 2] == 0xFF || row[pay + 2] == 0xFD || row[pay + 2] == 0xFC)) {
        if (row[pay] == 0x16)
            mask_handshake(row, w, pay, 1);
        pay += 13 + rd16(row, pay + 11);
    }
}

static void mask_session_row(uint8_t *row, Py_ssize_t w, int proto, int64_t l4) {
    if (proto == 6 && l4 >= 0 && l4 + 13 <= w) {
        int64_t hlen = (row[l4 + 12] >> 4) * 4, pos = l4 + 20, end = l4 + hlen < w ? l4 + hlen : w;
        int live = pos < end;
        for (int it = 0; it < 40 && live; it++) { /* TCP options: zero timestamp values */
            int64_t p = pos;
            int kind = row[p];
            int64_t ln = p + 1 < w ? row[p + 1] : 0;
            if (kind == 8 && ln == 10)
                zero_span(row, w, p + 2, 8);
            int nop = kind == 1;
            pos = p + (nop ? 1 : (ln > 2 ? ln : 2));
            live = kind != 0 && (nop || ln >= 2) && pos < end;
        }
        int64_t pay = l4 + hlen; /* a TLS handshake record starting the payload */
        if (pay + 6 <= w && hlen >= 20 && row[pay] == 0x16 && row[pay + 1] == 0x03)
            mask_handshake(row, w, pay, 0);
    }
    if (proto == 17 && l4 >= 0 && l4 + 8 + 6 <= w) { /* QUIC long header: connection ids */
        int64_t p = l4 + 8, dlen = row[p + 5];
        int quic = (row[p] & 0xC0) == 0xC0 && (row[p + 1] | row[p + 2] | row[p + 3] | row[p + 4]) > 0 && dlen <= 20;
        if (quic) {
            zero_span(row, w, p + 6, dlen);
            int64_t at = p + 6 + dlen, slen = at < w ? row[at] : 0;
            if (at < w && slen <= 20)
                zero_span(row, w, at + 1, slen);
        }
        if (row[p] == 0x16 && row[p + 1] == 0xFE && (row[p + 2] == 0xFF || row[p + 2] == 0xFD || row[p + 2] == 0xFC))
            mask_dtls_records(row, w, p); /* DTLS records from a handshake record starting the payload */
    }
}

/* hits: room for w + 4 offsets (at most one per byte of the row, plus alignment) */
static void scrub_row(uint8_t *row, Py_ssize_t w, int ipver, const uint8_t *src, const uint8_t *dst, int64_t *hits) {
    const uint8_t *addrs[2] = {src, dst};
    for (int a_i = 0; a_i < 2; a_i++) {
        const uint8_t *addr = addrs[a_i];
        int zeros = addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == 0;
        int ones = addr[0] == 255 && addr[1] == 255 && addr[2] == 255 && addr[3] == 255;
        if (zeros || ones) /* 0.0.0.0 and 255.255.255.255 identify nothing */
            continue;
        int nh = 0;
        for (int a = 20; a < 24; a++) { /* every alignment, found before any is zeroed */
            int64_t q = (w - a) / 4;
            for (int64_t c = 0; c < q; c++)
                if (memcmp(row + a + 4 * c, addr, 4) == 0)
                    hits[nh++] = a + 4 * c;
        }
        for (int k = 0; k < nh; k++) {
            int64_t c = hits[k];
            if (ipver == 4)
                zero_span(row, w, c, 4);
            else if (c + 16 <= w && memcmp(row + c, addr, 16) == 0)
                memset(row + c, 0, 16);
        }
    }
}

/* packet_rows(buf, start, end, rows, mask, ipver, proto, l4, seq, ack, src, dst)
 *
 * rows (uint8 [n, width], written): the first width bytes of buf[start:end] per packet (int64), zero-padded;
 * with mask, the shortcut fields zeroed as tensors.mask_rows, mask_session_ids and scrub_addresses do, in that
 * order (ipver/proto uint8, l4/seq/ack int64, src/dst uint8 [n, 16]).
 */
static PyObject *packet_rows(PyObject *self, PyObject *args) {
    enum { NB = 11 };
    static const char *names[NB] = {"buf", "start", "end", "rows", "ipver", "proto", "l4", "seq", "ack", "src", "dst"};
    PyObject *objs[NB];
    int mask;
    if (!PyArg_ParseTuple(args, "OOOOpOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &mask, &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &objs[9], &objs[10]))
        return NULL;
    Py_buffer v[NB];
    int got = 0;
    PyObject *result = NULL;
    for (; got < NB; got++)
        if (get_buffer(objs[got], &v[got], got == 3, -1, names[got]) < 0)
            goto done;
    Py_ssize_t n = v[1].len / 8;
    if (v[2].len != 8 * n || (n && v[3].len % n) || (mask && (v[4].len != n || v[5].len != n || v[6].len != 8 * n ||
        v[7].len != 8 * n || v[8].len != 8 * n || v[9].len != 16 * n || v[10].len != 16 * n))) {
        PyErr_SetString(PyExc_ValueError, "packet_rows: arrays of inconsistent lengths");
        goto done;
    }
    Py_ssize_t w = n ? v[3].len / n : 0;
    const uint8_t *buf = v[0].buf;
    int64_t blen = (int64_t)v[0].len;
    const int64_t *start = v[1].buf, *end = v[2].buf, *l4 = v[6].buf, *seq = v[7].buf, *ack = v[8].buf;
    const uint8_t *ipver = v[4].buf, *proto = v[5].buf, *src = v[9].buf, *dst = v[10].buf;
    uint8_t *rows = v[3].buf;
    int64_t *hits = PyMem_Malloc((size_t)(w + 4) * sizeof(int64_t));
    if (hits == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t *row = rows + w * i;
        int64_t a = start[i], e = end[i] < blen ? end[i] : blen, len = e - a;
        if (a < 0 || len < 0)
            len = 0;
        if (len > w)
            len = w;
        if (len)
            memcpy(row, buf + a, (size_t)len);
        memset(row + len, 0, (size_t)(w - len));
        if (mask) {
            mask_row(row, w, ipver[i], proto[i], l4[i], seq[i], ack[i]);
            mask_session_row(row, w, proto[i], l4[i]);
            scrub_row(row, w, ipver[i], src + 16 * i, dst + 16 * i, hits);
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(hits);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    release_buffers(v, got);
    return result;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Flow keys and their groups (flows.build_keys + flows._group_keys) */

#define KEY_WIDTH 40 /* flows.KEY_WIDTH: proto(1) vlan(2) lo_addr(16) lo_port(2) hi_addr(16) hi_port(2) ipver(1) */

static uint64_t key_hash(const uint8_t *k) {
    uint64_t h = 0x9E3779B97F4A7C15ULL, w;
    for (int i = 0; i < KEY_WIDTH; i += 8) {
        memcpy(&w, k + i, 8);
        h ^= w;
        h *= 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    return h;
}

/* flow_keys(sel, src, dst, sport, dport, proto, vlan, ipver, keys, src_lo, inv, order) -> first_of (int64 bytes)
 *
 * For the packets sel (int64 indices into the capture.Headers arrays src/dst (uint8 [n, 16]), sport/dport/vlan
 * (int64), proto/ipver (uint8)): the canonical bidirectional key of each (keys, uint8 [m, 40], written) and
 * whether its sender is the key's low side (src_lo, bool [m]), exactly as flows.build_keys; then the distinct keys
 * numbered in order of first appearance: inv (int64 [m], each packet's group), order (int64 [m], packets grouped
 * by key, in their order within a key) and, returned, each group's first packet. flows._group_keys numbers groups
 * in another order; the flow table does not depend on it (flow ids follow first packets).
 */

/* Whether t - ref > gap, computed exactly for any int64 t and ref (the difference may not fit int64). */
static inline int later_by_more(int64_t t, int64_t ref, int64_t gap) {
    if (t > ref) { /* the true difference d = t - ref is in [1, 2^64): compare as unsigned */
        uint64_t d = (uint64_t)t - (uint64_t)ref;
        return gap < 0 || d > (uint64_t)gap;
    }
    /* t - ref = -d with d = ref - t in [0, 2^64): -d > gap  <=>  gap < 0 and d < |gap| */
    uint64_t d = (uint64_t)ref - (uint64_t)t;
    return gap < 0 && d < (uint64_t)0 - (uint64_t)gap;
}

static PyObject *flow_keys(PyObject *self, PyObject *args) {
    enum { NB = 12 };
    static const char *names[NB] = {"sel", "src", "dst", "sport", "dport", "proto", "vlan", "ipver", "keys",
                                    "src_lo", "inv", "order"};
    PyObject *objs[NB];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &objs[9], &objs[10], &objs[11]))
        return NULL;
    Py_buffer v[NB];
    int got = 0;
    PyObject *result = NULL;
    int64_t *first = NULL, *table = NULL, *count = NULL;
    for (; got < NB; got++)
        if (get_buffer(objs[got], &v[got], got >= 8, -1, names[got]) < 0)
            goto done;
    Py_ssize_t m = v[0].len / 8, n = v[3].len / 8;
    if (v[1].len != 16 * n || v[2].len != 16 * n || v[4].len != 8 * n || v[5].len != n || v[6].len != 8 * n ||
        v[7].len != n || v[8].len != KEY_WIDTH * m || v[9].len != m || v[10].len != 8 * m || v[11].len != 8 * m) {
        PyErr_SetString(PyExc_ValueError, "flow_keys: arrays of inconsistent lengths");
        goto done;
    }
    const int64_t *sel = v[0].buf, *sport = v[3].buf, *dport = v[4].buf, *vlan = v[6].buf;
    const uint8_t *src = v[1].buf, *dst = v[2].buf, *proto = v[5].buf, *ipver = v[7].buf;
    uint8_t *keys = v[8].buf, *src_lo = v[9].buf;
    int64_t *inv = v[10].buf, *order = v[11].buf;
    for (Py_ssize_t r = 0; r < m; r++)
        if (sel[r] < 0 || sel[r] >= n) {
            PyErr_SetString(PyExc_ValueError, "flow_keys: packet index outside the arrays");
            goto done;
        }
    Py_ssize_t size = 16;
    while (size < 2 * m)
        size *= 2;
    first = PyMem_Malloc((size_t)(m > 0 ? m : 1) * sizeof(int64_t));
    table = PyMem_Malloc((size_t)size * sizeof(int64_t));
    count = PyMem_Calloc((size_t)(m > 0 ? m : 1) + 1, sizeof(int64_t));
    if (first == NULL || table == NULL || count == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t groups = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < size; i++)
        table[i] = -1;
    for (Py_ssize_t r = 0; r < m; r++) {
        int64_t i = sel[r];
        const uint8_t *s = src + 16 * i, *d = dst + 16 * i;
        int c = memcmp(s, d, 16);
        int lo_is_src = c == 0 ? sport[i] <= dport[i] : c < 0;
        const uint8_t *lo_a = lo_is_src ? s : d, *hi_a = lo_is_src ? d : s;
        int64_t lo_p = lo_is_src ? sport[i] : dport[i], hi_p = lo_is_src ? dport[i] : sport[i];
        uint8_t *k = keys + (Py_ssize_t)KEY_WIDTH * r;
        k[0] = proto[i];
        k[1] = (uint8_t)(vlan[i] >> 8);
        k[2] = (uint8_t)(vlan[i] & 0xFF);
        memcpy(k + 3, lo_a, 16);
        k[19] = (uint8_t)(lo_p >> 8);
        k[20] = (uint8_t)(lo_p & 0xFF);
        memcpy(k + 21, hi_a, 16);
        k[37] = (uint8_t)(hi_p >> 8);
        k[38] = (uint8_t)(hi_p & 0xFF);
        k[39] = ipver[i];
        src_lo[r] = (uint8_t)lo_is_src;
        Py_ssize_t slot = (Py_ssize_t)(key_hash(k) & (uint64_t)(size - 1));
        while (1) {
            int64_t g = table[slot];
            if (g < 0) {
                table[slot] = groups;
                first[groups] = r;
                inv[r] = groups++;
                break;
            }
            if (memcmp(keys + (Py_ssize_t)KEY_WIDTH * first[g], k, KEY_WIDTH) == 0) {
                inv[r] = g;
                break;
            }
            slot = (slot + 1) & (size - 1);
        }
        count[inv[r] + 1]++;
    }
    for (Py_ssize_t g = 0; g < groups; g++) /* counting sort by group: stable */
        count[g + 1] += count[g];
    for (Py_ssize_t r = 0; r < m; r++)
        order[count[inv[r]]++] = r;
    Py_END_ALLOW_THREADS
    result = PyBytes_FromStringAndSize((const char *)first, groups * (Py_ssize_t)sizeof(int64_t));
done:
    PyMem_Free(first);
    PyMem_Free(table);
    PyMem_Free(count);
    release_buffers(v, got);
    return result;
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Flow boundaries of the keys flows.FlowTracker cannot settle with numpy (FlowTracker._walk, step for step) */

/* walk_keys(ts, lo, fl, tcp, boundary, a, b, cont, start, last, fin, rst, client_lo, idle, active)
 *
 * Packets grouped by key in time order: ts (int64), lo (bool: the sender is the key's low side), fl (uint8 TCP
 * flags), tcp (bool); boundary (bool, written) marks packets that start a new flow. One entry per key to walk:
 * its packets a[k]..b[k]-1 (int64), whether its first packet continues the key's current flow (cont, bool), and
 * that flow's state: start/last timestamps (int64), fin (bool [k, 2]), rst (bool), client_lo (bool).
 */
static PyObject *walk_keys(PyObject *self, PyObject *args) {
    enum { NB = 13 };
    static const char *names[NB] = {"ts", "lo", "fl", "tcp", "boundary", "a", "b", "cont", "start", "last",
                                    "fin", "rst", "client_lo"};
    long long idle, active;
    PyObject *objs[NB];
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOLL", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &objs[6], &objs[7], &objs[8], &objs[9], &objs[10], &objs[11], &objs[12], &idle, &active))
        return NULL;
    Py_buffer v[NB];
    int got = 0;
    for (; got < NB; got++)
        if (get_buffer(objs[got], &v[got], got == 4, -1, names[got]) < 0)
            goto fail;
    Py_ssize_t m = v[0].len / 8, keys = v[5].len / 8;
    if (v[1].len != m || v[2].len != m || v[3].len != m || v[4].len != m || v[6].len != keys * 8 ||
        v[7].len != keys || v[8].len != keys * 8 || v[9].len != keys * 8 || v[10].len != keys * 2 ||
        v[11].len != keys || v[12].len != keys) {
        PyErr_SetString(PyExc_ValueError, "walk_keys: arrays of inconsistent lengths");
        goto fail;
    }
    const int64_t *ts = v[0].buf, *ka = v[5].buf, *kb = v[6].buf, *kstart = v[8].buf, *klast = v[9].buf;
    const uint8_t *lo = v[1].buf, *fl = v[2].buf, *tcp = v[3].buf, *kcont = v[7].buf, *kfin = v[10].buf,
                  *krst = v[11].buf, *kclient = v[12].buf;
    uint8_t *boundary = v[4].buf;
    for (Py_ssize_t k = 0; k < keys; k++) {
        if (ka[k] < 0 || kb[k] > m || ka[k] > kb[k]) {
            PyErr_SetString(PyExc_ValueError, "walk_keys: packet range outside the arrays");
            goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < keys; k++) {
        int64_t start = kstart[k], last = klast[k];
        int fin0 = kfin[2 * k] != 0, fin1 = kfin[2 * k + 1] != 0, rst = krst[k] != 0, client_lo = kclient[k] != 0;
        for (int64_t i = ka[k]; i < kb[k]; i++) {
            int64_t t = ts[i];
            int li = lo[i] != 0, f = fl[i], is_tcp = tcp[i] != 0, newf;
            if (i == ka[k])
                newf = !kcont[k];
            else {
                int syn = is_tcp && (f & 0x12) == 0x02;
                /* t - last > idle without signed overflow (ingest keeps times in [0, 2^62), but the walk must not
                   rely on its caller for defined behaviour): the same truth value for every int64 input. */
                newf = later_by_more(t, last, idle) || later_by_more(t, start, active) ||
                       (syn && (rst || (fin0 && fin1)));
                boundary[i] = (uint8_t)newf;
            }
            if (newf) {
                start = t;
                fin0 = fin1 = rst = 0;
                client_lo = li;
            }
            last = t;
            if (is_tcp) {
                if (f & 1) {
                    if (li != client_lo)
                        fin1 = 1;
                    else
                        fin0 = 1;
                }
                if (f & 4)
                    rst = 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    return release_and_return(v, got, 1);
fail:
    return release_and_return(v, got, 0);
}

/* ---------------------------------------------------------------------------------------------------------- */
/* Cleartext server names (names.server_name, step for step) */

static int is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 11 || c == 12; }
static int is_host_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

/* names._clean: strip ASCII whitespace, then trailing dots; 1-253 host characters and not all digits and dots.
 * Writes the lower-cased name to out (>= 253 bytes) and returns its length, 0 when it is not a name. */
static Py_ssize_t clean_name(const unsigned char *p, Py_ssize_t n, char *out) {
    Py_ssize_t a = 0, b = n;
    while (a < b && is_space(p[a]))
        a++;
    while (b > a && is_space(p[b - 1]))
        b--;
    while (b > a && p[b - 1] == '.')
        b--;
    Py_ssize_t len = b - a;
    if (len < 1 || len > 253)
        return 0;
    int literal = 1;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c = p[a + i];
        if (!is_host_char(c))
            return 0;
        if (!((c >= '0' && c <= '9') || c == '.'))
            literal = 0;
        out[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    return literal ? 0 : len;
}

/* int.from_bytes(p[i:i + 2], "big") where the slice may run past the end (shorter, or empty: 0) */
static Py_ssize_t be16_part(const unsigned char *p, Py_ssize_t n, Py_ssize_t i) {
    if (i >= n)
        return 0;
    if (i == n - 1)
        return p[i];
    return ((Py_ssize_t)p[i] << 8) | p[i + 1];
}

static Py_ssize_t tls_server_name(const unsigned char *p, Py_ssize_t n, char *out) {
    if (n < 48 || p[0] != 0x16)
        return 0;
    Py_ssize_t i;
    int dtls;
    if (p[1] == 0x03) {
        if (p[5] != 0x01)
            return 0;
        i = 9 + 2 + 32;
        dtls = 0;
    } else if (p[1] == 0xFE) {
        if (n < 60 || p[13] != 0x01)
            return 0;
        i = 25 + 2 + 32;
        dtls = 1;
    } else
        return 0;
    if (i >= n) return 0;
    i += 1 + p[i]; /* session id */
    if (dtls) {
        if (i >= n) return 0;
        i += 1 + p[i]; /* cookie */
    }
    i += 2 + be16_part(p, n, i); /* cipher suites */
    if (i >= n) return 0;
    i += 1 + p[i]; /* compression methods */
    Py_ssize_t end = i + 2 + be16_part(p, n, i);
    if (end > n)
        end = n;
    i += 2;
    while (i + 4 <= end) {
        Py_ssize_t etype = ((Py_ssize_t)p[i] << 8) | p[i + 1], elen = ((Py_ssize_t)p[i + 2] << 8) | p[i + 3];
        if (etype == 0) { /* server_name: list length(2), name type(1), name length(2), name */
            Py_ssize_t j = i + 4 + 2;
            if (j + 3 <= n && p[j] == 0) {
                Py_ssize_t ln = ((Py_ssize_t)p[j + 1] << 8) | p[j + 2];
                if (j + 3 + ln <= n)
                    return clean_name(p + j + 3, ln, out);
            }
            return 0;
        }
        i += 4 + elen;
    }
    return 0;
}

static const char *HTTP_METHODS[] = {"GET ", "POST ", "HEAD ", "PUT ", "OPTIONS ", "CONNECT ", "DELETE ", "PATCH ",
                                     "NOTIFY ", "M-SEARCH ", "SUBSCRIBE ", NULL};

static Py_ssize_t http_host(const unsigned char *p, Py_ssize_t n, char *out) {
    int method = 0;
    for (int k = 0; HTTP_METHODS[k] && !method; k++) {
        size_t len = strlen(HTTP_METHODS[k]);
        method = (size_t)n >= len && memcmp(p, HTTP_METHODS[k], len) == 0;
    }
    if (!method)
        return 0;
    /* re.search(rb"\r\nhost:[ \t]*([^\r\n:]{1,253})", p, 0, 2048), ignoring case */
    Py_ssize_t w = n < 2048 ? n : 2048;
    for (Py_ssize_t k = 0; k + 7 <= w; k++) {
        if (p[k] != '\r' || p[k + 1] != '\n' || (p[k + 2] | 32) != 'h' || (p[k + 3] | 32) != 'o' ||
            (p[k + 4] | 32) != 's' || (p[k + 5] | 32) != 't' || p[k + 6] != ':')
            continue;
        Py_ssize_t j = k + 7, t = j;
        while (t < w && (p[t] == ' ' || p[t] == '\t'))
            t++;
        if (t < w && p[t] != '\r' && p[t] != '\n' && p[t] != ':') {
            Py_ssize_t e = t;
            while (e < w && e - t < 253 && p[e] != '\r' && p[e] != '\n' && p[e] != ':')
                e++;
            return clean_name(p + t, e - t, out);
        }
        if (t > j) /* the regex backtracks: the group is the last blank, which cleans to nothing */
            return 0;
        /* no match at this position: the search goes on */
    }
    return 0;
}

static Py_ssize_t dns_question(const unsigned char *p, Py_ssize_t n, char *out) {
    if (n < 17)
        return 0;
    if (((p[2] >> 3) & 0x0F) != 0 || (((Py_ssize_t)p[4] << 8) | p[5]) < 1) /* opcode QUERY, 1+ question */
        return 0;
    unsigned char name[2048];
    Py_ssize_t len = 0, i = 12, first_at = 0, first_len = -1;
    while (1) {
        if (i >= n)
            return 0;
        Py_ssize_t ln = p[i];
        if (ln == 0)
            break;
        if (ln > 63 || i + 1 + ln > n)
            return 0;
        if (first_len >= 0)
            name[len++] = '.';
        else
            first_len = ln;
        memcpy(name + len, p + i + 1, (size_t)ln);
        len += ln;
        i += 1 + ln;
    }
    if (first_len < 0 || i + 5 > n)
        return 0;
    Py_ssize_t qclass = (((Py_ssize_t)p[i + 3] << 8) | p[i + 4]) & 0x7FFF; /* top bit: mDNS unicast response */
    if (qclass != 1 && qclass != 255)
        return 0;
    if (first_len == 32) { /* NetBIOS first-level encoding: 32 letters A-P, two per byte */
        int netbios = 1;
        for (int k = 0; k < 32 && netbios; k++) {
            unsigned char c = name[first_at + k];
            netbios = (c >= 'A' && c <= 'P') || (c >= 'a' && c <= 'p');
        }
        if (netbios) {
            unsigned char raw[16];
            for (int k = 0; k < 16; k++) {
                unsigned char a = name[2 * k], b = name[2 * k + 1];
                a = (a >= 'a') ? a - 32 : a;
                b = (b >= 'a') ? b - 32 : b;
                raw[k] = (unsigned char)(((a - 65) << 4) | (b - 65));
            }
            Py_ssize_t rl = 15; /* suffix byte dropped, then padding */
            while (rl > 0 && (raw[rl - 1] == ' ' || raw[rl - 1] == 0))
                rl--;
            memmove(name + rl, name + 32, (size_t)(len - 32));
            memcpy(name, raw, (size_t)rl);
            len = len - 32 + rl;
        }
    }
    return clean_name(name, len, out);
}

/* server_names(buf, start, end, proto) -> [(k, name), ...]
 *
 * names.server_name(bytes(buf[start[k]:min(end[k], start[k] + 2048)]), proto[k]) for every k (start, end: int64;
 * proto: uint8), listing only the packets that announce a name.
 */
static PyObject *server_names(PyObject *self, PyObject *args) {
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3]))
        return NULL;
    static const char *names[4] = {"buf", "start", "end", "proto"};
    Py_buffer v[4];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 4; got++)
        if (get_buffer(objs[got], &v[got], 0, -1, names[got]) < 0)
            goto done;
    Py_ssize_t m = v[1].len / 8;
    if (v[2].len != m * 8 || v[3].len != m) {
        PyErr_SetString(PyExc_ValueError, "server_names: arrays of inconsistent lengths");
        goto done;
    }
    const unsigned char *buf = v[0].buf;
    const int64_t *start = v[1].buf, *end = v[2].buf;
    const uint8_t *proto = v[3].buf;
    result = PyList_New(0);
    if (result == NULL)
        goto done;
    char out[256];
    for (Py_ssize_t k = 0; k < m; k++) {
        int64_t a = start[k], e = end[k];
        if (e > a + 2048)
            e = a + 2048;
        if (a < 0 || e > (int64_t)v[0].len || e <= a)
            continue;
        const unsigned char *p = buf + a;
        Py_ssize_t n = (Py_ssize_t)(e - a), len = 0;
        if (proto[k] == 6)
            len = p[0] == 0x16 ? tls_server_name(p, n, out) : http_host(p, n, out);
        else if (proto[k] == 17) {
            if (p[0] == 0x16)
                len = tls_server_name(p, n, out);
            else {
                len = dns_question(p, n, out);
                if (!len)
                    len = http_host(p, n, out);
            }
        }
        if (len) {
            PyObject *item = Py_BuildValue("(ns#)", k, out, len);
            if (item == NULL || PyList_Append(result, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(result);
                goto done;
            }
            Py_DECREF(item);
        }
    }
done:
    release_buffers(v, got);
    return result;
}

static PyMethodDef methods[] = {
    {"record_offsets", record_offsets, METH_VARARGS,
     "record_offsets(buffer, n, big_endian) -> (int64 offsets as bytes, stop offset)"},
    {"epb_run", epb_run, METH_VARARGS,
     "epb_run(buffer, pos, n, big_endian, max_len) -> (int64 offsets of the enhanced packet blocks from pos, stop)"},
    {"parse_headers", parse_headers, METH_VARARGS,
     "parse_headers(buf, off, caplen, wirelen, linktype, <16 output arrays>): capture.Headers fields in place"},
    {"server_names", server_names, METH_VARARGS,
     "server_names(buf, start, end, proto) -> [(k, name)]: names.server_name of every packet that has one"},
    {"packet_rows", packet_rows, METH_VARARGS,
     "packet_rows(buf, start, end, rows, mask, ipver, proto, l4, seq, ack, src, dst): rows extracted and masked"},
    {"flow_keys", flow_keys, METH_VARARGS,
     "flow_keys(sel, src, dst, sport, dport, proto, vlan, ipver, keys, src_lo, inv, order) -> first_of"},
    {"walk_keys", walk_keys, METH_VARARGS,
     "walk_keys(ts, lo, fl, tcp, boundary, a, b, cont, start, last, fin, rst, client_lo, idle, active)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_capture_c", NULL, -1, methods};

PyMODINIT_FUNC PyInit__capture_c(void) { return PyModule_Create(&module); }
