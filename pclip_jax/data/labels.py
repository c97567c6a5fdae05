"""Flow labels: nDPI `ndpiReader` output, folder names, CSV files; the label hierarchy (level 1 / level 2).

`attach_labels(table, spec)` adds the label columns of the flow-table contract (docs/architecture.md):
`label` (raw label, e.g. nDPI's `TLS.Google`), `app`, `category`, `encrypted` (1/0, -1 unknown), `level1`
(service class), `level2` (application); '' means unlabelled. The mapping is documented in docs/labels.md and
lives in `label_hierarchy.yaml`.

This module imports neither JAX nor TensorFlow: the ingest CLI calls it.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import ipaddress
import pathlib
import re
import sys
import types
from collections import Counter, defaultdict
from typing import Optional

import numpy as np
import yaml
from tqdm import tqdm

from pclip_jax.data.capture import find_captures

# The service classes shared by labels, knowledge graph and metrics (docs/architecture.md). Fixed order: their
# index is the `level1` class id of the datasets.
LEVEL1_CLASSES = (
    "Web", "Chat", "VoIP", "Streaming", "FileTransfer", "P2P", "VPN/Tunnel", "Email", "Game", "RemoteAccess",
    "Collaboration", "Infrastructure", "SocialNetwork", "Cloud", "IoT/Industrial", "Database", "CryptoCurrency",
    "Malware",
)
LABEL_COLUMNS = ("label", "app", "category", "encrypted", "level1", "level2")
UNKNOWN = "Unknown"  # nDPI's name for undetected flows; they stay unlabelled at level 1/2
DEFAULT_HIERARCHY = pathlib.Path(__file__).with_name("label_hierarchy.yaml")

# IP protocol names as ndpiReader prints them; anything else is printed as its number.
IP_PROTO_NUMBERS = {
    "ICMP": 1, "IGMP": 2, "IPIP": 4, "TCP": 6, "EGP": 8, "UDP": 17, "IPV6": 41, "RSVP": 46, "GRE": 47, "ESP": 50,
    "AH": 51, "ICMPV6": 58, "EIGRP": 88, "OSPF": 89, "PIM": 103, "VRRP": 112, "L2TP": 115, "SCTP": 132,
}


# --------------------------------------------------------------------------------------------------------------
# nDPI .out files
# --------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NdpiFlow:
    """One flow line of an ndpiReader output file. `src` is the side nDPI prints first."""
    index: int            # flow number printed by nDPI
    line: int             # 1-based line number in the file
    proto: int            # IP protocol number
    src_ip: str           # normalised (ipaddress compressed form, no brackets)
    src_port: int
    dst_ip: str
    dst_port: int
    vlan: int             # 0 when nDPI printed no [VLAN: ...]
    label: str            # nDPI protocol string without tunnel prefix, e.g. `TLS.Google`; `Unknown` if undetected
    master: str           # `TLS`
    app: str              # `Google`; '' when nDPI gives only the master protocol
    category: str         # nDPI category name, e.g. `Web`; '' when absent
    encrypted: int        # 1 [Encrypted], 0 [ClearText], -1 not printed
    src_packets: int      # packets src → dst
    src_bytes: int
    dst_packets: int      # packets dst → src
    dst_bytes: int
    tunnel: str = ""      # encapsulation nDPI decoded (GTP, CAPWAP, GRE, ...): the 5-tuple is the inner one
    undetected: bool = False  # listed under "Undetected flows:"


_HEAD = re.compile(r"^\t(\d+)\t(\S+) (\S+) (<->|->) (\S+) ")
_VLAN = re.compile(r"\[VLAN: (\d+)\]")
_PROTO = re.compile(r"\[proto: (?:([A-Za-z0-9_-]+):)?([0-9]+(?:\.[0-9]+)?)/([^\]\s]+)\]")
_ENC = re.compile(r"\[(Encrypted|ClearText)\]")
_CAT = re.compile(r"\[cat: ([^/\]]+)/\d+\]")
_COUNTS = re.compile(r"\[(\d+) pkts/(\d+) bytes (?:<->|->) (\d+) pkts/(\d+) bytes\]")


def _split_endpoint(text: str) -> tuple[str, int]:
    """`1.2.3.4:80` or `[2001:db8::1]:443` → (normalised ip, port). Raises ValueError."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad IPv6 endpoint {text!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"endpoint {text!r} has no port")
    return ipaddress.ip_address(host).compressed, int(port)


def _ip_proto(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return IP_PROTO_NUMBERS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown IP protocol name {name!r}") from None


def split_protocol(label: str) -> tuple[str, str]:
    """nDPI protocol string → (master, app): `TLS.Google` → (`TLS`, `Google`), `DNS` → (`DNS`, '')."""
    master, _, app = label.partition(".")
    return master, app


def parse_ndpi_line(line: str, lineno: int = 0, undetected: bool = False) -> Optional[NdpiFlow]:
    """Parses one flow line; None when the line is not a flow line. Raises ValueError for a malformed flow line."""
    head = _HEAD.match(line)
    if head is None or "[proto:" not in line:
        return None
    index, proto_name, src, arrow, dst = head.groups()
    proto = _ip_proto(proto_name)
    src_ip, src_port = _split_endpoint(src)
    dst_ip, dst_port = _split_endpoint(dst)
    # The fixed fields come before the free-text ones (URL, User-Agent, ...), so the first match is the field.
    m_proto = _PROTO.search(line)
    if m_proto is None:
        raise ValueError("no parsable [proto: ID/NAME] field")
    m_counts = _COUNTS.search(line)
    if m_counts is None:
        raise ValueError("no [N pkts/N bytes <-> N pkts/N bytes] field")
    tunnel, proto_id, name = m_proto.groups()
    if len(proto_id.split(".")) == 1 and "." in name:
        # A single protocol id whose name has a dot cannot be split reliably: keep it whole as the master.
        master, app = name, ""
    else:
        master, app = split_protocol(name)
    if master == UNKNOWN:
        master, app, name = UNKNOWN, "", UNKNOWN
    m_vlan = _VLAN.search(line)
    m_enc = _ENC.search(line)
    m_cat = _CAT.search(line)
    sp, sb, dp, db = (int(x) for x in m_counts.groups())
    if arrow == "->" and dp:
        raise ValueError(f"one-way arrow '->' but {dp} packets from the destination")
    return NdpiFlow(
        index=int(index), line=lineno, proto=proto, src_ip=src_ip, src_port=src_port, dst_ip=dst_ip,
        dst_port=dst_port, vlan=int(m_vlan.group(1)) if m_vlan else 0, label=name, master=master, app=app,
        category=m_cat.group(1) if m_cat else "", encrypted=-1 if m_enc is None else int(m_enc.group(1) == "Encrypted"),
        src_packets=sp, src_bytes=sb, dst_packets=dp, dst_bytes=db, tunnel=tunnel or "",
        undetected=undetected or name == UNKNOWN)


def parse_ndpi_out(path: str | pathlib.Path, errors: Optional[list] = None) -> list[NdpiFlow]:
    """Reads the flows of an ndpiReader output file (`CAPTURE.out`).

    Binary junk is tolerated (the file is decoded with replacement characters). A malformed flow line is skipped
    and reported as `{'file', 'line', 'reason'}`: appended to `errors` when given, else printed to stderr.
    Flows after the line `Undetected flows:` get the label `Unknown`.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    flows: list[NdpiFlow] = []
    undetected = False
    # Split on b"\n" only: str.splitlines() would also break at \x0b, \x1c, ... inside junk text fields.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if line.startswith("Undetected flows:"):
            undetected = True
            continue
        try:
            flow = parse_ndpi_line(line, lineno, undetected)
        except ValueError as e:
            err = {"file": str(path), "line": lineno, "reason": str(e)}
            if errors is None:
                print(f"[labels] {path}:{lineno}: malformed flow line skipped: {e}", file=sys.stderr)
            else:
                errors.append(err)
            continue
        if flow is not None:
            flows.append(flow)
    return flows


# --------------------------------------------------------------------------------------------------------------
# The label hierarchy
# --------------------------------------------------------------------------------------------------------------

def _norm(name: str) -> str:
    """Lookup key: case and punctuation do not matter (`Skype_TeamsCall`, `skype-teams call`, `SkypeTeamsCall`)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


@dataclasses.dataclass(frozen=True)
class NameRule:
    """A file-name rule of a public dataset: regex on the capture's base name → classes."""
    pattern: re.Pattern
    label: str
    level1: str
    level2: str


@dataclasses.dataclass(frozen=True)
class DatasetRules:
    """Class list and file-name rules of one public dataset (ISCX VPN-nonVPN 2016, USTC-TFC2016, ...)."""
    name: str
    description: str
    rules: tuple[NameRule, ...]
    attribute: str                     # name of the per-capture attribute (`vpn`, `malicious`), '' if none
    attribute_pattern: Optional[re.Pattern]
    attribute_values: tuple[str, str]  # category value when the attribute pattern does not / does match


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Raw labels → (level 1 service class, level 2 application). Build with `load_hierarchy`."""
    level1: tuple[str, ...]
    categories: dict          # normalised nDPI category → level 1
    carriers: dict            # normalised master protocol → level 1; the master also becomes level 2
    applications: dict        # normalised app or protocol name → level 1
    canonical: dict           # normalised name → spelling used as level 2 when a name is given in another case
    datasets: dict            # dataset name → DatasetRules
    source: str = ""

    def level1_id(self, name: str) -> int:
        """Index of a level-1 class (the dataset class id), -1 for '' or an unknown name."""
        try:
            return self.level1.index(name)
        except ValueError:
            return -1


def _hierarchy_error(source, where, reason):
    return ValueError(f"{source}: {where}: {reason}")


def load_hierarchy(path: str | pathlib.Path | None = None) -> Hierarchy:
    """Loads and validates a label hierarchy YAML (default: the shipped `label_hierarchy.yaml`).

    Every mapped level-1 name must be one of the file's `level1` list, and that list must be the project's
    service classes (`LEVEL1_CLASSES`). Errors name the file and the entry. The result is read-only and memoised
    per file version (path + modification time), so repeated `map_label` calls do not re-read the file.
    """
    path = pathlib.Path(path).resolve() if path else DEFAULT_HIERARCHY
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as e:
        raise FileNotFoundError(f"label hierarchy {path}: {e.strerror}") from None
    return _load_hierarchy(str(path), mtime)


@functools.lru_cache(maxsize=8)
def _load_hierarchy(path_str: str, mtime_ns: int) -> Hierarchy:
    del mtime_ns  # part of the cache key only
    path = pathlib.Path(path_str)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise _hierarchy_error(path, "top level", "expected a mapping")
    level1 = tuple(doc.get("level1") or ())
    if level1 != LEVEL1_CLASSES:
        raise _hierarchy_error(path, "level1", f"must list the service classes of docs/architecture.md in order: "
                                              f"{list(LEVEL1_CLASSES)}; got {list(level1)}")
    known = set(level1)
    canonical = {}

    def table(section: str) -> dict:
        entries = doc.get(section) or {}
        if not isinstance(entries, dict):
            raise _hierarchy_error(path, section, "expected a mapping name → level-1 class")
        out = {}
        for name, cls in entries.items():
            if cls not in known:
                raise _hierarchy_error(path, f"{section}.{name}", f"unknown level-1 class {cls!r}; "
                                                                  f"expected one of {list(level1)}")
            key = _norm(name)
            if key in out and out[key] != cls:
                raise _hierarchy_error(path, f"{section}.{name}", f"maps to {cls!r} but a spelling of the same "
                                                                  f"name maps to {out[key]!r}")
            out[key] = cls
            canonical.setdefault(key, str(name))
        return out

    categories, carriers, applications = table("categories"), table("carriers"), table("applications")
    datasets = {}
    for ds_name, ds in (doc.get("datasets") or {}).items():
        where = f"datasets.{ds_name}"
        if not isinstance(ds, dict) or not isinstance(ds.get("rules"), list):
            raise _hierarchy_error(path, where, "expected a mapping with a `rules` list")
        rules = []
        for i, r in enumerate(ds["rules"]):
            rw = f"{where}.rules[{i}]"
            if not isinstance(r, dict) or not {"pattern", "level1", "level2"} <= set(r):
                raise _hierarchy_error(path, rw, "needs pattern, level1 and level2")
            if r["level1"] not in known:
                raise _hierarchy_error(path, rw, f"unknown level-1 class {r['level1']!r}")
            try:
                pat = re.compile(r["pattern"], re.IGNORECASE)
            except re.error as e:
                raise _hierarchy_error(path, rw, f"bad regex {r['pattern']!r}: {e}") from None
            rules.append(NameRule(pat, str(r.get("label", r["level2"])), r["level1"], str(r["level2"])))
        attr = ds.get("attribute") or {}
        try:
            attr_pat = re.compile(attr["pattern"], re.IGNORECASE) if attr else None
        except (re.error, KeyError) as e:
            raise _hierarchy_error(path, f"{where}.attribute", f"needs a valid `pattern`: {e}") from None
        values = tuple(attr.get("values", ("", ""))) if attr else ("", "")
        if len(values) != 2:
            raise _hierarchy_error(path, f"{where}.attribute.values", "expected [value if no match, value if match]")
        datasets[ds_name] = DatasetRules(ds_name, str(ds.get("description", "")), tuple(rules),
                                         str(attr.get("name", "")) if attr else "", attr_pat, values)
    ro = types.MappingProxyType
    return Hierarchy(level1=level1, categories=ro(categories), carriers=ro(carriers), applications=ro(applications),
                     canonical=ro(canonical), datasets=ro(datasets), source=str(path))


def map_label(label: str, category: str = "", hierarchy: Optional[Hierarchy] = None) -> tuple[str, str]:
    """Raw label (+ nDPI category) → (level1, level2); ('', '') when the label is unknown or unmapped.

    Precedence: a carrier master protocol (DNS.Google is DNS traffic: Infrastructure / DNS), then the application
    part, then the master protocol, then the category, then a label that itself names a level-1 class or a category
    (folder labels such as `Chat`, `vpn` or `file_transfer`). Level 2 is the application part if present, else the
    master protocol.
    """
    h = hierarchy or load_hierarchy()
    if not label or label == UNKNOWN:
        return "", ""
    master, app = split_protocol(label)
    km, ka = _norm(master), _norm(app)
    if km in h.carriers:
        return h.carriers[km], h.canonical.get(km, master)
    level2 = h.canonical.get(ka, app) if app else h.canonical.get(km, master)
    for key in (ka, km):
        if key and key in h.applications:
            return h.applications[key], level2
    if category and _norm(category) in h.categories:
        return h.categories[_norm(category)], level2
    if not app and not category:
        # Folder / CSV labels that name a class: `Chat`, `vpn`, `file_transfer`.
        direct = {_norm(c): c for c in h.level1}
        if km in direct:
            return direct[km], master
        if km in h.categories:
            return h.categories[km], master
    return "", level2


def map_capture_name(name: str, dataset: str, hierarchy: Optional[Hierarchy] = None) -> Optional[dict]:
    """Base name of a capture of a public dataset → {'label', 'level1', 'level2', 'category'}; None if no rule.

    `category` carries the dataset's per-capture attribute (ISCX: `VPN` / `NonVPN`; USTC: `Benign` / `Malware`),
    kept separate from the service class.
    """
    h = hierarchy or load_hierarchy()
    try:
        ds = h.datasets[dataset]
    except KeyError:
        raise ValueError(f"no file-name rules for dataset {dataset!r} in {h.source}; "
                         f"known: {sorted(h.datasets)}") from None
    base = pathlib.PurePath(name).name
    for rule in ds.rules:
        if rule.pattern.search(base):
            category = ""
            if ds.attribute_pattern is not None:
                category = ds.attribute_values[bool(ds.attribute_pattern.search(base))]
            return {"label": rule.label, "level1": rule.level1, "level2": rule.level2, "category": category}
    return None


# --------------------------------------------------------------------------------------------------------------
# attach_labels
# --------------------------------------------------------------------------------------------------------------

class _IpNorm(dict):
    """Memoised ip-string normalisation (the same few addresses repeat over many flows)."""

    def __missing__(self, ip):
        try:
            v = ipaddress.ip_address(str(ip).strip("[]")).compressed
        except ValueError:
            v = str(ip)
        self[ip] = v
        return v


def _key(proto, ip_a, port_a, ip_b, port_b):
    """Direction-free flow key."""
    a, b = (ip_a, int(port_a)), (ip_b, int(port_b))
    return (int(proto),) + (a + b if a <= b else b + a)


def _resolve_ndpi_out(root: pathlib.Path, capture: str) -> Optional[pathlib.Path]:
    base = pathlib.PurePath(capture).name + ".out"
    for d in (root, root / "result", root / "tests" / "cfgs" / "default" / "result"):
        if (d / base).is_file():
            return d / base
    return None


def _empty_columns(n: int) -> dict:
    return {"label": [""] * n, "app": [""] * n, "category": [""] * n, "encrypted": np.full(n, -1, np.int64),
            "level1": [""] * n, "level2": [""] * n}


def _oriented_counts_equal(out: NdpiFlow, client_ip, client_port, c2s, s2c) -> bool:
    """True when the ingested flow has nDPI's packet count in each direction (either orientation of nDPI's print)."""
    same = (client_ip, int(client_port)) == (out.src_ip, out.src_port)
    rev = (client_ip, int(client_port)) == (out.dst_ip, out.dst_port)
    fwd_ok = (int(c2s), int(s2c)) == (out.src_packets, out.dst_packets)
    rev_ok = (int(c2s), int(s2c)) == (out.dst_packets, out.src_packets)
    return (same and fwd_ok) or (rev and rev_ok)


def _oriented(out: NdpiFlow, meta: dict, r: int, ipn) -> tuple[int, int]:
    """Packets of ingested row r as (nDPI src → dst, dst → src)."""
    c2s, s2c = int(meta["c2s_packets"][r]), int(meta["s2c_packets"][r])
    if (ipn[meta["client_ip"][r]], int(meta["client_port"][r])) == (out.src_ip, out.src_port):
        return c2s, s2c
    return s2c, c2s


def _split_run(out: NdpiFlow, cands: list, meta: dict, ipn) -> list:
    """The shortest run (>= 2) of consecutive (by first packet) candidate rows whose packets, per direction, add up
    to the nDPI flow's; [] if none."""
    if len(cands) < 2:
        return []
    cands = sorted(cands, key=lambda r: (float(meta["first_ts"][r]), int(meta["flow_id"][r])))
    counts = [_oriented(out, meta, r, ipn) for r in cands]
    want = (out.src_packets, out.dst_packets)
    best: list = []
    for i in range(len(cands)):
        a = b = 0
        for j in range(i, len(cands)):
            a, b = a + counts[j][0], b + counts[j][1]
            if a > want[0] or b > want[1]:
                break
            if (a, b) == want and j > i and (not best or j + 1 - i < len(best)):
                best = cands[i:j + 1]
                break
    return best


def _label_ndpi(meta: dict, root: pathlib.Path, h: Hierarchy, cols: dict, progress: bool) -> dict:
    from tqdm import tqdm

    if not root.is_dir():
        raise FileNotFoundError(f"labels ndpi:{root}: not a directory")
    ipn = _IpNorm()
    captures = np.asarray(meta["capture"]).astype(str)
    rows_by_capture = defaultdict(list)
    for i, c in enumerate(captures):
        rows_by_capture[c].append(i)
    stats = Counter()
    errors: list = []
    missing = []
    cache: dict = {}
    for capture, rows in tqdm(sorted(rows_by_capture.items()), desc="labels (nDPI)", unit="capture",
                              disable=not progress, file=sys.stderr):
        out_path = _resolve_ndpi_out(root, capture)
        if out_path is None:
            missing.append(capture)
            continue
        stats["out_files"] += 1
        # Two captures with the same base name in different folders share one .out: parse once.
        if out_path not in cache:
            cache[out_path] = parse_ndpi_out(out_path, errors)
        out_flows = cache[out_path]
        # Ingested rows of this capture by key (+vlan) and by key alone (QinQ: nDPI prints the inner VLAN).
        by_key_vlan, by_key = defaultdict(list), defaultdict(list)
        for r in rows:
            k = _key(meta["proto"][r], ipn[meta["client_ip"][r]], meta["client_port"][r],
                     ipn[meta["server_ip"][r]], meta["server_port"][r])
            by_key_vlan[k + (int(meta["vlan"][r]),)].append(r)
            by_key[k].append(r)
        assigned: dict[int, NdpiFlow] = {}
        leftovers = []
        for f in out_flows:
            stats["out_flows"] += 1
            k = _key(f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port)
            cands = by_key_vlan.get(k + (f.vlan,)) or by_key.get(k, [])
            if not cands:
                stats["out_flows_not_in_capture"] += 1
                if f.tunnel:
                    stats["out_flows_tunnelled_not_in_capture"] += 1
                continue
            stats["out_flows_in_capture"] += 1
            exact = [r for r in cands if r not in assigned and _oriented_counts_equal(
                f, ipn[meta["client_ip"][r]], meta["client_port"][r], meta["c2s_packets"][r], meta["s2c_packets"][r])]
            if exact:
                # Several equal candidates (a reused 5-tuple): take the earliest unassigned one.
                assigned[exact[0]] = f
                stats["out_flows_matched"] += 1
            else:
                leftovers.append((f, cands))
        # A conversation that ingest split (idle/active timeout, FIN then reuse) but nDPI did not: consecutive
        # pieces whose packet counts add up to nDPI's in each direction all take its label.
        rest = []
        for f, cands in leftovers:
            run = _split_run(f, [r for r in cands if r not in assigned], meta, ipn)
            if run:
                for r in run:
                    assigned[r] = f
                stats["out_flows_matched_split"] += 1
                stats["flows_in_split_matches"] += len(run)
            else:
                rest.append((f, cands))
        # Anything else with nDPI's key keeps nDPI's label, counted apart from the matches.
        for f, cands in rest:
            for r in cands:
                if r not in assigned:
                    assigned[r] = f
                    stats["flows_labelled_by_key_only"] += 1
        for r, f in assigned.items():
            _set_row(cols, r, f.label, f.app, f.category, f.encrypted, h)
    return {"out_files": stats["out_files"], "captures_without_out": len(missing),
            "captures_without_out_list": sorted(missing)[:50],
            "out_flows": stats["out_flows"], "out_flows_in_capture": stats["out_flows_in_capture"],
            "out_flows_matched": stats["out_flows_matched"],
            "out_flows_not_in_capture": stats["out_flows_not_in_capture"],
            "out_flows_tunnelled_not_in_capture": stats["out_flows_tunnelled_not_in_capture"],
            "out_flows_matched_split": stats["out_flows_matched_split"],
            "flows_in_split_matches": stats["flows_in_split_matches"],
            "flows_labelled_by_key_only": stats["flows_labelled_by_key_only"],
            # of the .out flows whose packets are in the capture: share matched by one ingested flow with the same
            # packet count in each direction; and including conversations ingest split into consecutive pieces.
            "match_rate": stats["out_flows_matched"] / max(stats["out_flows_in_capture"], 1),
            "match_rate_with_splits": ((stats["out_flows_matched"] + stats["out_flows_matched_split"])
                                       / max(stats["out_flows_in_capture"], 1)),
            "malformed_lines": errors[:100], "malformed_line_count": len(errors)}


def _set_row(cols, r, label, app, category, encrypted, h: Hierarchy, level1=None, level2=None):
    cols["label"][r] = label
    cols["app"][r] = app
    cols["category"][r] = category
    cols["encrypted"][r] = encrypted
    if level1 is None:
        level1, level2 = map_label(label, category, h)
    cols["level1"][r] = level1
    cols["level2"][r] = level2 or ""


def _label_folder(meta: dict, h: Hierarchy, cols: dict) -> dict:
    captures = np.asarray(meta["capture"]).astype(str)
    no_folder = 0
    for r, c in enumerate(captures):
        parent = pathlib.PurePath(c).parent.name
        if not parent:
            no_folder += 1
            continue
        level1, level2 = map_label(parent, "", h)
        _set_row(cols, r, parent, "", "", -1, h, level1, level2 or parent)
    return {"flows_without_folder": no_folder}


def _label_rules(meta: dict, dataset: str, h: Hierarchy, cols: dict) -> dict:
    captures = np.asarray(meta["capture"]).astype(str)
    unmatched = set()
    for r, c in enumerate(captures):
        m = map_capture_name(c, dataset, h)
        if m is None:
            unmatched.add(c)
            continue
        _set_row(cols, r, m["label"], m["level2"], m["category"], -1, h, m["level1"], m["level2"])
    return {"captures_without_rule": len(unmatched), "captures_without_rule_list": sorted(unmatched)[:50]}


CSV_REQUIRED = ("capture", "proto", "ip_a", "port_a", "ip_b", "port_b", "label")


def _dpi_flows(path: pathlib.Path, idle_timeout: float, active_timeout: float):
    """nDPI's verdict on every flow of one capture, through nfstream (what users already run)."""
    # Imported here: nfstream is an optional dependency (`pip install nfstream`), needed only for `--labels dpi`.
    try:
        from nfstream import NFStreamer
    except ImportError:
        raise ValueError("--labels dpi needs nfstream (pip install 'nfstream>=6.5,<7')") from None
    streamer = NFStreamer(source=str(path), statistical_analysis=False, n_dissections=20, n_meters=1,
                          idle_timeout=int(idle_timeout), active_timeout=int(active_timeout))
    rows = []
    for f in streamer:
        rows.append((int(f.protocol), f.src_ip, int(f.src_port), f.dst_ip, int(f.dst_port),
                     f.bidirectional_first_seen_ms / 1000.0, f.application_name or UNKNOWN,
                     f.application_category_name or ""))
    return rows


def _label_dpi(meta: dict, inputs, h: Hierarchy, cols: dict, progress: bool, idle_timeout: float = 120.0,
               active_timeout: float = 1800.0) -> dict:
    """Labels every flow by running nDPI (nfstream) on its capture; flows are matched by capture, direction-free
    5-tuple and, when a tuple repeats, by the nearest start time. Labels read like nDPI's result files
    (`TLS.Google`, category `Web`) and go through the same hierarchy."""
    if not inputs:
        raise ValueError("--labels dpi needs the capture inputs (the files to run nDPI on)")
    # The capture column holds a capture's path relative to the input it was found under (ingest's naming).
    paths = {str(p.relative_to(root)) if p != root else p.name: p for p, root in find_captures(inputs)}
    captures = np.asarray(meta["capture"]).astype(str)
    matched, unmatched_files, dpi_flows = 0, [], 0
    by_capture: dict = {}
    for r in range(len(captures)):
        by_capture.setdefault(captures[r], []).append(r)
    for capture, rows in tqdm(by_capture.items(), total=len(by_capture), desc="labels (DPI)", unit="capture",
                              file=sys.stderr, disable=not progress):
        path = paths.get(capture)
        if path is None:
            unmatched_files.append(capture)
            continue
        try:
            verdicts = _dpi_flows(path, idle_timeout, active_timeout)
        except ValueError:
            raise
        except Exception as e:  # a capture nDPI cannot read: its flows stay unlabelled, the rest goes on
            unmatched_files.append(f"{capture} ({type(e).__name__})")
            continue
        dpi_flows += len(verdicts)
        index: dict = {}
        for v in verdicts:
            index.setdefault(_key(v[0], v[1], v[2], v[3], v[4]), []).append(v)
        for r in rows:
            key = _key(meta["proto"][r], meta["client_ip"][r], meta["client_port"][r], meta["server_ip"][r],
                       meta["server_port"][r])
            candidates = index.get(key)
            if not candidates:
                continue
            v = min(candidates, key=lambda c: abs(c[5] - float(meta["first_ts"][r])))
            _set_row(cols, r, v[6], split_protocol(v[6])[1], v[7], -1, h)
            matched += 1
    return {"dpi_engine": "nDPI via nfstream", "dpi_flows": dpi_flows, "flows_matched": matched,
            "captures_without_dpi": len(unmatched_files), "captures_without_dpi_list": unmatched_files[:50]}


def read_label_csv(path: str | pathlib.Path) -> list[dict]:
    """Reads a flow-label CSV: columns `capture, proto, ip_a, port_a, ip_b, port_b, label` and optionally `vlan`,
    `category`, `encrypted`, `level1`, `level2`. The two endpoints may be in either order. Errors name the row."""
    path = pathlib.Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header lacks columns {missing}; required: {list(CSV_REQUIRED)}")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            try:
                rows.append({
                    "capture": pathlib.PurePath(row["capture"]).name,
                    "key": _key(_ip_proto(row["proto"].strip()), ipaddress.ip_address(row["ip_a"].strip("[] ")).compressed,
                                int(row["port_a"] or 0), ipaddress.ip_address(row["ip_b"].strip("[] ")).compressed,
                                int(row["port_b"] or 0)),
                    "vlan": int(row.get("vlan") or 0), "label": row["label"].strip(),
                    "category": (row.get("category") or "").strip(),
                    "encrypted": int(row.get("encrypted") or -1),
                    "level1": (row.get("level1") or "").strip() or None,
                    "level2": (row.get("level2") or "").strip() or None})
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: bad row {dict(row)}: {e}") from None
    return rows


def _label_csv(meta: dict, path: pathlib.Path, h: Hierarchy, cols: dict) -> dict:
    rows = read_label_csv(path)
    for i, row in enumerate(rows, start=2):
        if row["level1"] is not None and row["level1"] not in h.level1:
            raise ValueError(f"{path}:{i}: unknown level1 {row['level1']!r}; expected one of {list(h.level1)}")
    table = {}
    for row in rows:
        table[(row["capture"],) + row["key"] + (row["vlan"],)] = row
        table.setdefault((row["capture"],) + row["key"], row)
    ipn = _IpNorm()
    captures = np.asarray(meta["capture"]).astype(str)
    used = set()
    for r in range(len(captures)):
        k = (pathlib.PurePath(captures[r]).name,) + _key(meta["proto"][r], ipn[meta["client_ip"][r]],
                                                         meta["client_port"][r], ipn[meta["server_ip"][r]],
                                                         meta["server_port"][r])
        row = table.get(k + (int(meta["vlan"][r]),)) or table.get(k)
        if row is None:
            continue
        used.add(id(row))
        level1, level2 = row["level1"], row["level2"]
        if level1 is None:
            level1, mapped2 = map_label(row["label"], row["category"], h)
            level2 = level2 or mapped2
        _set_row(cols, r, row["label"], split_protocol(row["label"])[1], row["category"], row["encrypted"], h,
                 level1, level2 or row["label"])
    return {"csv_rows": len(rows), "csv_rows_matched": len(used)}


def attach_labels(table, spec: str, hierarchy: Optional[Hierarchy] = None, progress: bool = True, inputs=None):
    """Returns a copy of the flow table with the label columns and `summary['labels']` (match counts).

    spec: `ndpi:DIR` (nDPI output `DIR/CAPTURE.out`, or DIR/result/CAPTURE.out for the nDPI data root),
    `folder` (the capture's parent folder is its class), `csv:PATH` (flow labels by capture + 5-tuple),
    `rules:DATASET` (file-name rules of a public dataset in the hierarchy, e.g. `rules:iscx_vpn2016`),
    `dpi` (nDPI run on the captures `inputs` through nfstream, for captures that come without labels).
    """

    h = hierarchy or load_hierarchy()
    kind, _, arg = spec.partition(":")
    n = len(table.meta["capture"])
    cols = _empty_columns(n)
    if kind == "ndpi":
        if not arg:
            raise ValueError("labels spec 'ndpi:DIR' needs a directory")
        summary = _label_ndpi(table.meta, pathlib.Path(arg).expanduser(), h, cols, progress)
    elif kind == "folder":
        summary = _label_folder(table.meta, h, cols)
    elif kind == "csv":
        if not arg:
            raise ValueError("labels spec 'csv:PATH' needs a file")
        summary = _label_csv(table.meta, pathlib.Path(arg).expanduser(), h, cols)
    elif kind == "rules":
        summary = _label_rules(table.meta, arg, h, cols)
    elif kind == "dpi":
        summary = _label_dpi(table.meta, inputs, h, cols, progress)
    else:
        raise ValueError(f"unknown labels spec {spec!r}: expected ndpi:DIR, folder, csv:PATH, rules:DATASET or dpi")
    level1 = np.asarray(cols["level1"], dtype=object)
    label = np.asarray(cols["label"], dtype=object)
    summary = {"spec": spec, "hierarchy": h.source, "flows": n,
               "flows_labelled": int((label != "").sum()),
               "flows_unknown": int((label == UNKNOWN).sum()),
               "flows_with_level1": int((level1 != "").sum()),
               "unmapped_labels": dict(Counter(l for l, c in zip(label, level1) if l and l != UNKNOWN and not c)
                                       .most_common(50)),
               **summary}
    if summary.get("malformed_line_count"):
        print(f"[labels] {summary['malformed_line_count']} malformed nDPI lines skipped; first: "
              f"{summary['malformed_lines'][0]}", file=sys.stderr)
    return _with_label_columns(table, cols, summary)


def _with_label_columns(table, cols: dict, summary: dict):
    """A new FlowTable whose meta has the label columns (replacing old ones) and whose summary has `labels`."""
    meta = {k: v for k, v in table.meta.items() if k not in LABEL_COLUMNS}
    for c in LABEL_COLUMNS:
        meta[c] = np.asarray(cols[c], dtype=np.int64) if c == "encrypted" else np.asarray(cols[c], dtype=str)
        if meta[c].dtype.kind == "U" and meta[c].size == 0:
            meta[c] = meta[c].astype("<U1")
    new_summary = dict(getattr(table, "summary", None) or {})
    new_summary["labels"] = summary
    return dataclasses.replace(table, meta=meta, summary=new_summary)
