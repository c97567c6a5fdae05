"""Text for a flow: plain-language class descriptions plus templated facts of the flow itself.

* `load_class_descriptions()` reads `pclip_jax/data/class_descriptions.yaml`: per service class
  (and optionally per application) several phrasings of what such traffic looks like on the wire.
* `flow_facts(sizes, iat, num_packets, proto)` turns one flow of the flow-table contract
  (docs/architecture.md) into a sentence: transport, direction mix, size profile, timing
  profile, duration. Plain numpy in, so it does not depend on `FlowTable.stats_names`.
* `sample_flow_texts(rng, names, facts, descriptions)` draws one text per flow per step
  (augmentation: a random template and phrasing, the flow facts with probability p_facts).
* `zero_shot_prompts(class_names, descriptions)` lists every prompt of every class, for
  prompt ensembling at evaluation (`average_by_class` averages their embeddings).
"""
from __future__ import annotations

import pathlib
import re
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import yaml

from pclip_jax.data.names import name_words
from pclip_jax.graph.schema import display_name  # noqa: F401  (the same class names in prompts and graphs)

DEFAULT_DESCRIPTIONS = pathlib.Path(__file__).resolve().parent.parent / "data" / "class_descriptions.yaml"
_SECTIONS = ("classes", "applications")

# "{name}" is the class's display name, "{description}" one of its phrasings.
CLASS_TEMPLATES = (
    "network traffic of {name}: {description}",
    "{name} traffic. {description}",
    "a {name} flow: {description}",
)
# For a name without phrasings of its own (e.g. an application absent from the file).
NAME_ONLY_TEMPLATES = (
    "network traffic of {name}.",
    "{name} traffic.",
    "a network flow of {name}.",
)
# For an application without phrasings whose parent class has some: "{parent}" is the class.
CHILD_TEMPLATES = (
    "{name} traffic, a kind of {parent}: {description}",
    "network traffic of {name} ({parent}): {description}",
)

_PROTO_NAMES = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6-in-IPv4", 47: "GRE",
                50: "IPsec ESP", 51: "IPsec AH", 58: "ICMPv6", 89: "OSPF", 132: "SCTP"}


def load_class_descriptions(path: Optional[Union[str, pathlib.Path]] = None,
                            sections: Sequence[str] = _SECTIONS) -> dict[str, list[str]]:
    """Reads class (and application) descriptions: {name: [phrasing, ...]}.

    Args:
      path: a YAML file with top-level `classes:` and optional `applications:` mappings
        of name → list of phrasings; None = the shipped pclip_jax/data/class_descriptions.yaml.
      sections: which sections to merge into the result (a name may appear in only one).

    Raises ValueError naming the file, section and entry for a malformed file, an empty
    phrasing, a duplicate name or a duplicate phrasing.
    """
    path = pathlib.Path(path) if path else DEFAULT_DESCRIPTIONS
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: class descriptions file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with a `classes:` section")
    unknown = set(data) - set(_SECTIONS) - {"version"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)} "
                         f"(expected {list(_SECTIONS)} and optional `version`)")
    if "classes" not in data:
        raise ValueError(f"{path}: missing the `classes:` section")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}  # normalize_name(name) -> section
    for section in sections:
        if section not in _SECTIONS:
            raise ValueError(f"load_class_descriptions: unknown section {section!r} "
                             f"(expected one of {list(_SECTIONS)})")
        table = data.get(section) or {}
        if not isinstance(table, dict):
            raise ValueError(f"{path}: `{section}` must map names to lists of phrasings")
        for name, phrasings in table.items():
            where = f"{path}: {section}.{name}"
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{path}: {section}: names must be non-empty strings, got {name!r}")
            if normalize_name(name) in seen:
                raise ValueError(f"{where}: name already defined in `{seen[normalize_name(name)]}` "
                                 "(names are matched ignoring case and punctuation)")
            if isinstance(phrasings, str) or not isinstance(phrasings, list) or not phrasings:
                raise ValueError(f"{where}: expected a non-empty list of phrasings")
            clean = []
            for j, p in enumerate(phrasings):
                if not isinstance(p, str) or not p.strip():
                    raise ValueError(f"{where}[{j}]: phrasing must be a non-empty string, got {p!r}")
                p = " ".join(p.split())
                if p in clean:
                    raise ValueError(f"{where}[{j}]: duplicate phrasing {p!r}")
                clean.append(p)
            seen[normalize_name(name)] = section
            out[name] = clean
    return out


def normalize_name(name: str) -> str:
    """The key names are matched by: case and punctuation ignored, as in the label
    hierarchy (`Skype_TeamsCall` = `skype-teams call`, `VPN/Tunnel` = `vpn tunnel`)."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _lookup(name: str, descriptions: Mapping[str, Sequence[str]]) -> Sequence[str]:
    if name in descriptions:
        return descriptions[name]
    key = normalize_name(name)
    for other, value in descriptions.items():
        if normalize_name(other) == key:
            return value
    return ()


def has_phrasings(name: str, descriptions: Mapping[str, Sequence[str]]) -> bool:
    """Whether `name` (matched as `class_prompts` matches it) has its own phrasings."""
    return bool(_lookup(name, descriptions))


def class_prompts(class_name: str, descriptions: Mapping[str, Sequence[str]]) -> list[str]:
    """All prompts for one class: every template × every phrasing of the class.

    Names are matched ignoring case and punctuation (`normalize_name`). A class without phrasings gets name-only
    prompts ("network traffic of X."), so zero-shot still works for unseen names.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(f"class_prompts: class name must be a non-empty string, got {class_name!r}")
    name = display_name(class_name)
    phrasings = _lookup(class_name, descriptions)
    if not phrasings:
        return [t.format(name=name) for t in NAME_ONLY_TEMPLATES]
    return [t.format(name=name, description=d) for d in phrasings for t in CLASS_TEMPLATES]


def _child_prompts(name: str, parent: str, descriptions) -> list[str]:
    return [t.format(name=display_name(name), parent=display_name(parent), description=d)
            for d in _lookup(parent, descriptions) for t in CHILD_TEMPLATES]


def zero_shot_prompts(class_names: Sequence[str], descriptions: Mapping[str, Sequence[str]]
                      ) -> tuple[list[str], np.ndarray]:
    """Prompts of every class for zero-shot evaluation with prompt ensembling.

    Returns (texts, class_index): a flat list of prompts and int32 [len(texts)] giving
    the position in `class_names` each prompt belongs to.
    """
    texts: list[str] = []
    index: list[int] = []
    for c, name in enumerate(class_names):
        prompts = class_prompts(name, descriptions)
        texts.extend(prompts)
        index.extend([c] * len(prompts))
    return texts, np.asarray(index, np.int32)


def average_by_class(embeddings, class_index, num_classes: int) -> np.ndarray:
    """Prompt ensembling: mean of each class's (unit) prompt embeddings, renormalised → [C, D].

    A class with no prompt gets a zero row.
    """
    emb = np.asarray(embeddings, np.float64)
    idx = np.asarray(class_index)
    if emb.ndim != 2 or idx.shape != (emb.shape[0],):
        raise ValueError(f"average_by_class: embeddings {emb.shape} and class_index {idx.shape} "
                         "must be [P, D] and [P]")
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"average_by_class: class_index outside [0, {num_classes})")
    sums = np.zeros((num_classes, emb.shape[1]))
    np.add.at(sums, idx, emb)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------- flow facts

def _transport(proto: int) -> str:
    name = _PROTO_NAMES.get(int(proto))
    return name if name else f"IP protocol {int(proto)}"


def _flow_head(proto: int) -> str:
    transport = _transport(proto)
    # "an ICMP flow", "a UDP flow": the article follows how the acronym is spoken.
    return f"{'An' if transport[0] in 'AEFHILMNORSX' else 'A'} {transport} flow"


def _direction_phrase(up: int, down: int) -> str:
    """From the bytes each way: ≥ 70 % one way is mostly that way."""
    total = up + down
    if down == 0:
        return "one-way, no reply"
    if up == 0:
        return "one-way from the server"
    if down >= 0.7 * total:
        return "mostly download"
    if up >= 0.7 * total:
        return "mostly upload"
    return "balanced both ways"


def _size_phrase(n: int, first: int, small: float, large: float) -> str:
    """From the share of small (< 200 bytes) and large (≥ 1000) packets, or the first packet's size when alone."""
    if n == 1:
        return f"a single {'small' if first < 200 else 'large' if first >= 1000 else 'medium'} packet"
    if small >= 0.8:
        return "small packets"
    if large >= 0.5:
        return "large packets"
    if small >= 0.3 and large >= 0.2:
        return "mixed small and large packets"
    return "medium-sized packets"


def _duration_phrase(seconds: float) -> str:
    if seconds < 0.001:
        return "lasting under 1 ms"
    ms = max(1, round(seconds * 1000, -1 if seconds >= 0.1 else 0))
    if ms < 1000:
        return f"lasting {ms:.0f} ms"
    if seconds < 90:
        return f"lasting {seconds:.0f} seconds" if seconds >= 1.5 else "lasting about a second"
    if seconds < 5400:
        return f"lasting {seconds / 60:.0f} minutes"
    return f"lasting {seconds / 3600:.0f} hours"


def _cv(gaps: np.ndarray) -> float:
    """Coefficient of variation of gaps (inf when they are all zero)."""
    mean = gaps.mean()
    return float(gaps.std() / mean) if mean > 0 else float("inf")


def _timing_phrase(s: np.ndarray, iat: np.ndarray) -> str:
    """steady / interactive / bursty / irregular, from n ≥ 3 signed sizes and their gaps.

    Regularity is judged per direction: a two-way VoIP call interleaves two regular
    streams, so its gaps between consecutive packets of either direction are not regular.
    """
    t = np.cumsum(iat)
    per_dir = [np.diff(t[s > 0]), np.diff(t[s < 0])]
    per_dir = [g for g in per_dir if g.size >= 2]
    if per_dir and all(_cv(g) < 0.5 for g in per_dir):
        return "steady timing"
    # Back-and-forth at network/human pace; TCP's data/ACK alternation within a
    # back-to-back burst (gaps well under 5 ms) is not interaction.
    if np.mean(np.sign(s[1:]) != np.sign(s[:-1])) >= 0.5 and np.median(iat[1:]) >= 0.005:
        return "interactive timing"
    if _cv(iat[1:]) >= 1.0:
        return "bursty timing"
    return "irregular timing"


def flow_facts(sizes, iat, num_packets: int, proto: int,
               duration: Optional[float] = None) -> str:
    """One sentence of facts about a flow, from the flow-table tensors of one row.

    Args:
      sizes: int [K] signed IP lengths (+ client→server, − server→client, 0 = padding).
      iat: float [K] seconds since the flow's previous packet.
      num_packets: valid rows (≤ K).
      proto: IP protocol number (6 TCP, 17 UDP, ...).
      duration: the flow's full duration in seconds (meta `last_ts - first_ts`); default:
        the span of the packets seen (sum of `iat`).

    Returns e.g. "A TCP flow, mostly download, mixed small and large packets, bursty
    timing, lasting 3 seconds." (under ~30 tokens, so a class prompt plus the facts fits
    a 64-token text). Rules: direction by byte share (≥ 70% one way = mostly that way);
    small < 200 bytes, large ≥ 1000 bytes; timing steady when the gaps within each
    direction vary little (CV < 0.5), interactive when the direction alternates at least
    every other packet with median gap ≥ 5 ms, bursty when the gaps vary a lot (CV ≥ 1),
    else irregular.
    """
    sizes = np.asarray(sizes)
    iat = np.asarray(iat, np.float64)
    if sizes.ndim != 1 or iat.shape != sizes.shape:
        raise ValueError(f"flow_facts: sizes {sizes.shape} and iat {iat.shape} must both be [K]")
    n = int(num_packets)
    if not 0 <= n <= sizes.shape[0]:
        raise ValueError(f"flow_facts: num_packets {n} outside [0, {sizes.shape[0]}]")
    s = sizes[:n].astype(np.int64)
    if not np.all(np.isfinite(iat[:n])):
        raise ValueError("flow_facts: iat has non-finite values")
    # Captures can hold packets slightly out of time order: a negative gap counts as 0.
    iat = np.maximum(iat, 0.0)
    parts = [_flow_head(proto)]
    if n == 0:
        return parts[0] + " with no packets."

    up, down = int(s[s > 0].sum()), int(-s[s < 0].sum())
    parts.append(_direction_phrase(up, down))
    mag = np.abs(s)
    parts.append(_size_phrase(n, int(mag[0]), float(np.mean(mag < 200)), float(np.mean(mag >= 1000))))

    if n < 3:
        parts.append("too few packets to judge timing")
    else:
        parts.append(_timing_phrase(s, iat[:n]))

    if duration is not None and not (np.isfinite(duration) and duration >= 0):
        raise ValueError(f"flow_facts: duration must be finite and >= 0, got {duration}")
    span = float(iat[1:n].sum()) if duration is None else float(duration)
    if n >= 2 or duration is not None:
        parts.append(_duration_phrase(max(span, 0.0)))
    return ", ".join(parts) + "."


def flow_facts_batch(sizes, iat, num_packets, proto, duration=None) -> list[str]:
    """`flow_facts` for every row of flow-table columns: sizes/iat [N, K], num_packets/proto [N],
    optional duration [N] (e.g. meta `last_ts - first_ts`).

    The same sentences as calling `flow_facts` row by row (tested on every flow of the real captures), computed
    over the whole batch: rows are grouped by their number of packets (and, for the per-direction gaps, by the
    number of gaps), so each statistic is numpy's own reduction over a contiguous row — the same arithmetic as on
    one flow — at a small fraction of the per-flow cost (classify builds a sentence for every flow it reports)."""
    sizes, iat = np.asarray(sizes), np.asarray(iat)
    num_packets, proto = np.asarray(num_packets), np.asarray(proto)
    n_rows = sizes.shape[0]
    if sizes.ndim != 2 or iat.shape != sizes.shape or num_packets.shape != (n_rows,) or proto.shape != (n_rows,):
        raise ValueError(f"flow_facts_batch: shapes sizes {sizes.shape}, iat {iat.shape}, "
                         f"num_packets {num_packets.shape}, proto {proto.shape} do not agree")
    K = sizes.shape[1]
    n = num_packets.astype(np.int64)
    iat64 = iat.astype(np.float64)
    dur = None if duration is None else np.asarray(duration, np.float64)
    valid = np.arange(K)[None, :] < n[:, None]
    # The first bad row fails with the message flow_facts gives for it.
    bad_n = (n < 0) | (n > K)
    bad_iat = (~np.isfinite(iat64) & valid).any(1) & ~bad_n
    # (a flow without packets returns before its duration is read)
    bad_dur = np.zeros(n_rows, bool) if dur is None else ~(np.isfinite(dur) & (dur >= 0)) & (n != 0) & ~bad_n
    bad = np.nonzero(bad_n | bad_iat | bad_dur)[0]
    if len(bad):
        i = int(bad[0])
        reason = (f"num_packets {int(n[i])} outside [0, {K}]" if bad_n[i] else
                  "iat has non-finite values" if bad_iat[i] else
                  f"duration must be finite and >= 0, got {float(dur[i])}")
        raise ValueError(f"flow_facts_batch: row {i}: flow_facts: {reason}")

    s = np.where(valid, sizes.astype(np.int64), 0)
    gaps = np.where(valid, np.maximum(iat64, 0.0), 0.0)
    up = np.where(s > 0, s, 0).sum(1)
    down = -np.where(s < 0, s, 0).sum(1)
    mag = np.abs(s)
    count = np.maximum(n, 1)
    small = ((mag < 200) & valid).sum(1) / count
    large = ((mag >= 1000) & valid).sum(1) / count

    timing = np.full(n_rows, "", dtype=object)
    span = np.zeros(n_rows)
    for k in np.unique(n).tolist():
        rows = np.nonzero(n == k)[0]
        if dur is None and k >= 2:  # the span of the packets seen stands in for a duration not given
            span[rows] = np.ascontiguousarray(gaps[rows, 1:k]).sum(1)
        if k >= 3:
            timing[rows] = _timing_phrases(s[rows, :k], gaps[rows, :k])

    out = []
    for i, (pr, k, u, d, sm, lg, m0, tm, sp) in enumerate(zip(
            proto.tolist(), n.tolist(), up.tolist(), down.tolist(), small.tolist(),
            large.tolist(), mag[:, 0].tolist(), timing.tolist(), span.tolist())):
        head = _flow_head(pr)
        if k == 0:
            out.append(head + " with no packets.")
            continue
        parts = [head, _direction_phrase(u, d), _size_phrase(k, m0, sm, lg)]
        parts.append("too few packets to judge timing" if k < 3 else tm)
        if dur is not None:
            parts.append(_duration_phrase(max(float(dur[i]), 0.0)))
        elif k >= 2:
            parts.append(_duration_phrase(max(sp, 0.0)))
        out.append(", ".join(parts) + ".")
    return out


def _cv_rows(g: np.ndarray) -> np.ndarray:
    """`_cv` of every row of a contiguous [R, m] array (m >= 1)."""
    mean = g.mean(1)
    std = g.std(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), np.inf)


def _timing_phrases(s: np.ndarray, iat: np.ndarray) -> np.ndarray:
    """`_timing_phrase` of every row of [R, n] signed sizes and gaps (n >= 3, the same n for all rows)."""
    R, n = s.shape
    t = np.cumsum(iat, axis=1)
    # Per direction: gaps between consecutive packets of that direction, rows grouped by how many there are.
    all_steady = np.ones(R, bool)
    any_dir = np.zeros(R, bool)
    for mask in (s > 0, s < 0):
        m = mask.sum(1)
        order = np.argsort(~mask, axis=1, kind="stable")  # the direction's packets first, in time order
        td = np.take_along_axis(t, order, axis=1)
        for c in np.unique(m[m >= 3]).tolist():
            rows = np.nonzero(m == c)[0]
            g = np.diff(td[rows, :c], axis=1)
            any_dir[rows] = True
            all_steady[rows] &= _cv_rows(np.ascontiguousarray(g)) < 0.5
    steady = any_dir & all_steady
    alternating = (np.sign(s[:, 1:]) != np.sign(s[:, :-1])).mean(1) >= 0.5
    later = np.ascontiguousarray(iat[:, 1:])
    interactive = alternating & (np.median(later, axis=1) >= 0.005)
    bursty = _cv_rows(later) >= 1.0
    return np.where(steady, "steady timing", np.where(interactive, "interactive timing", np.where(
        bursty, "bursty timing", "irregular timing"))).astype(object)


# --------------------------------------------------------------------------- per-step sampling

NAME_TEXT_PREFIX = "a connection to "


def name_text(server_name: str) -> str:
    """The pre-training text of a server name (`text.name_texts`): its words, e.g. 'a connection to r3 sn 4g5e
    googlevideo com'; '' for a flow without a name."""
    words = name_words(server_name) if server_name else ""
    return f"{NAME_TEXT_PREFIX}{words}" if words else ""


def with_name_texts(rng: np.random.Generator, texts: list[str], server_names: Sequence[str], p_name: float
                    ) -> tuple[list[str], np.ndarray]:
    """`texts` with each flow that has a server name given its `name_text` instead, with probability `p_name`;
    and which flows were (bool [N])."""
    draw = rng.random(len(texts)) < p_name
    swapped = np.zeros(len(texts), bool)
    out = list(texts)
    for i, name in enumerate(server_names):
        if draw[i] and name:
            t = name_text(name)
            if t:
                out[i], swapped[i] = t, True
    return out, swapped


def _flow_names(entry) -> list[str]:
    """One flow's label names, general to specific ('' = unlabelled at that level)."""
    names = [entry] if isinstance(entry, str) else list(entry)
    for x in names:
        if not isinstance(x, str):
            raise TypeError(f"sample_flow_texts: class names must be str, got {type(x).__name__}")
    return [x for x in names if x.strip()]


def _prompts_for(names: list[str], pick: int, descriptions) -> list[str]:
    name = names[pick]
    if _lookup(name, descriptions):
        return class_prompts(name, descriptions)
    # An application without phrasings of its own borrows its class's, naming both.
    for parent in names[:pick]:
        if _lookup(parent, descriptions):
            return _child_prompts(name, parent, descriptions)
    return class_prompts(name, descriptions)


def sample_flow_texts(rng: np.random.Generator, class_names: Sequence[Union[str, Sequence[str]]],
                      facts: Sequence[str], descriptions: Mapping[str, Sequence[str]],
                      p_facts: float = 0.5) -> list[str]:
    """One training text per flow, resampled every step as augmentation.

    For flow i: one of its names (`class_names[i]` is a name or a list of names general →
    specific, e.g. [level1, level2]; '' entries are ignored) is chosen uniformly, then one
    of that name's prompts (template × phrasing); with probability `p_facts` the flow's
    facts sentence `facts[i]` is appended. A flow with no name at all gets its facts only.
    """
    if len(class_names) != len(facts):
        raise ValueError(f"sample_flow_texts: {len(class_names)} class names but {len(facts)} facts")
    if not 0.0 <= p_facts <= 1.0:
        raise ValueError(f"sample_flow_texts: p_facts must be in [0, 1], got {p_facts}")
    cache: dict[tuple, list[str]] = {}
    texts = []
    add_facts = rng.random(len(facts)) < p_facts
    for i, entry in enumerate(class_names):
        names = _flow_names(entry)
        if not names:
            texts.append(facts[i])
            continue
        pick = int(rng.integers(len(names)))
        key = (tuple(names), pick)
        prompts = cache.get(key)
        if prompts is None:
            prompts = cache[key] = _prompts_for(names, pick, descriptions)
        text = prompts[int(rng.integers(len(prompts)))]
        texts.append(f"{text} {facts[i]}" if add_facts[i] and facts[i] else text)
    return texts
