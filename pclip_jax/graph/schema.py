"""Knowledge-graph schema: mission → service class → application, each node described in plain language.

A graph is a YAML mapping::

    name: ndpi                      # graph name
    description: ...                # optional
    nodes:
      - id: mission                 # unique id
        level: 0                    # 0 mission (exactly one), 1 service class, 2 application
        name: Classify nDPI traffic # human name
        descriptions: ["..."]       # one or more non-empty plain-language descriptions
      - id: VPN/Tunnel
        level: 1
        parent: mission             # required for levels 1 and 2; must be exactly one level up
        name: VPN and tunnels
        descriptions: ["..."]
        aliases: [VPN]              # optional; used to match dataset labels to nodes
        related: [RemoteAccess]     # optional undirected "related" edges
    edges:                          # optional extra edges, same meaning as the node fields
      - {type: child, source: VPN/Tunnel, target: WireGuard}   # source is the parent of target
      - {type: related, source: VPN/Tunnel, target: RemoteAccess}
    missions: {...}                 # optional, read by pclip_jax.graph.missions

Validation (`parse_kg`) raises `KGValidationError` naming the file and the node for: duplicate id, missing or
unknown parent, a node with two parents, a cycle in the hierarchy, a level that is not one below its parent's,
an empty or missing description, unknown fields.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Iterable, Mapping

import yaml

LEVEL_NAMES = {0: "mission", 1: "service class", 2: "application"}
MAX_LEVEL = 2
_NODE_FIELDS = {"id", "level", "name", "descriptions", "aliases", "parent", "related", "description"}
_TOP_FIELDS = {"name", "description", "nodes", "edges", "missions", "version"}


class KGValidationError(ValueError):
    """A knowledge graph that breaks the schema; the message names the source, the node and the reason."""


@dataclasses.dataclass(frozen=True)
class KGNode:
    """One node of the knowledge graph."""
    id: str
    level: int
    name: str
    descriptions: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    parent: str | None = None


@dataclasses.dataclass(frozen=True)
class KnowledgeGraph:
    """A validated tree (plus undirected `related` edges). Node order is the file order, parents first."""
    name: str
    nodes: tuple[KGNode, ...]
    related: tuple[tuple[str, str], ...] = ()
    description: str = ""
    missions: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {n.id: i for i, n in enumerate(self.nodes)})

    # -- lookups -------------------------------------------------------------------------------------------------
    def index(self, node_id: str) -> int:
        """Position of `node_id` in `nodes`."""
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"knowledge graph {self.name!r} has no node {node_id!r}") from None

    def node(self, node_id: str) -> KGNode:
        return self.nodes[self.index(node_id)]

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    @property
    def root(self) -> KGNode:
        return next(n for n in self.nodes if n.level == 0)

    def level_ids(self, level: int) -> list[str]:
        """Ids of the nodes at `level`, in graph order (this order defines the class index at that level)."""
        return [n.id for n in self.nodes if n.level == level]

    def children(self, node_id: str) -> list[str]:
        return [n.id for n in self.nodes if n.parent == node_id]

    def path(self, node_id: str) -> list[str]:
        """Ids from the root down to `node_id`."""
        out = [node_id]
        while (parent := self.node(out[-1]).parent) is not None:
            out.append(parent)
        return out[::-1]

    def descendants(self, node_id: str) -> list[str]:
        out, todo = [], [node_id]
        while todo:
            kids = self.children(todo.pop())
            out.extend(kids)
            todo.extend(kids)
        return out

    def resolve(self, label: str, level: int | None = None) -> str | None:
        """Node id for a dataset label, matched on id, name or alias (case-insensitive); None when absent."""
        key = str(label).strip().lower()
        if not key:
            return None
        for n in self.nodes:
            if level is not None and n.level != level:
                continue
            if key == n.id.lower() or key == n.name.lower() or key in (a.lower() for a in n.aliases):
                return n.id
        return None

    def with_nodes(self, nodes: Iterable[KGNode], name: str | None = None) -> "KnowledgeGraph":
        """A new validated graph with `nodes` (e.g. a subgraph or an extension); related edges are kept when both
        ends survive."""
        nodes = tuple(nodes)
        ids = {n.id for n in nodes}
        related = tuple((a, b) for a, b in self.related if a in ids and b in ids)
        kg = KnowledgeGraph(name or self.name, nodes, related, self.description, self.missions)
        validate(kg, source=f"<derived from {self.name}>")
        return kg


def _error(source: str, where: str, reason: str) -> KGValidationError:
    return KGValidationError(f"{source}: {where}: {reason}")


def _str_list(value: Any, source: str, where: str, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise _error(source, where, f"{field!r} must be a list of strings, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _error(source, where, f"{field}[{i}] must be a string, got {type(item).__name__}")
        out.append(item.strip())
    return tuple(out)


def parse_kg(data: Any, source: str = "<kg>") -> KnowledgeGraph:
    """Builds and validates a `KnowledgeGraph` from a parsed YAML/JSON mapping (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise _error(source, "top level", f"expected a mapping with 'nodes', got {type(data).__name__}")
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise _error(source, "top level", f"unknown field(s) {sorted(unknown)}; allowed {sorted(_TOP_FIELDS)}")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise _error(source, "top level", "'nodes' must be a non-empty list")

    nodes: list[KGNode] = []
    seen: dict[str, int] = {}
    related: list[tuple[str, str]] = []
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(raw, Mapping):
            raise _error(source, where, f"expected a mapping, got {type(raw).__name__}")
        node_id = raw.get("id")
        if not isinstance(node_id, (str, int)) or not str(node_id).strip():
            raise _error(source, where, "missing or empty 'id'")
        node_id = str(node_id).strip()
        where = f"node {node_id!r}"
        unknown = set(raw) - _NODE_FIELDS
        if unknown:
            raise _error(source, where, f"unknown field(s) {sorted(unknown)}; allowed {sorted(_NODE_FIELDS)}")
        if node_id in seen:
            raise _error(source, where, f"duplicate id (nodes[{seen[node_id]}] and nodes[{i}])")
        seen[node_id] = i
        level = raw.get("level")
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= MAX_LEVEL:
            raise _error(source, where, f"'level' must be an integer 0..{MAX_LEVEL} "
                                        f"({', '.join(f'{k} {v}' for k, v in LEVEL_NAMES.items())}), got {level!r}")
        descriptions = _str_list(raw.get("descriptions", raw.get("description")), source, where, "descriptions")
        if not descriptions:
            raise _error(source, where, "needs at least one description")
        for j, d in enumerate(descriptions):
            if not d:
                raise _error(source, where, f"descriptions[{j}] is empty")
        name = raw.get("name", node_id)
        if not isinstance(name, str) or not name.strip():
            raise _error(source, where, "'name' must be a non-empty string")
        parent = raw.get("parent")
        if parent is not None:
            parent = str(parent).strip()
        nodes.append(KGNode(node_id, level, name.strip(), descriptions,
                            _str_list(raw.get("aliases"), source, where, "aliases"), parent))
        related.extend((node_id, r) for r in _str_list(raw.get("related"), source, where, "related"))

    # Extra edges: type child (source is the parent of target) or related.
    parents = {n.id: n.parent for n in nodes}
    for i, edge in enumerate(data.get("edges") or []):
        where = f"edges[{i}]"
        if not isinstance(edge, Mapping) or {"source", "target"} - set(edge):
            raise _error(source, where, "an edge needs 'source' and 'target' (and 'type': child or related)")
        kind, a, b = edge.get("type", "child"), str(edge["source"]), str(edge["target"])
        for end in (a, b):
            if end not in parents:
                raise _error(source, where, f"unknown node {end!r}")
        if kind in ("child", "parent"):
            if parents[b] is not None and parents[b] != a:
                raise _error(source, f"node {b!r}", f"has two parents ({parents[b]!r} and {a!r}); "
                                                    "the hierarchy must be a tree")
            parents[b] = a
        elif kind == "related":
            related.append((a, b))
        else:
            raise _error(source, where, f"unknown edge type {kind!r} (child or related)")
    nodes = [dataclasses.replace(n, parent=parents[n.id]) for n in nodes]

    description = data.get("description", "") or ""
    kg = KnowledgeGraph(str(data.get("name", "kg")), tuple(nodes), tuple(related), str(description),
                        dict(data.get("missions") or {}))
    validate(kg, source)
    # Parents first: a stable topological order (by level, then file order) keeps class indices predictable.
    ordered = tuple(sorted(kg.nodes, key=lambda n: n.level))
    return KnowledgeGraph(kg.name, ordered, kg.related, kg.description, kg.missions)


def validate(kg: KnowledgeGraph, source: str = "<kg>") -> None:
    """Checks the tree structure of `kg`; raises `KGValidationError` naming the offending node."""
    by_id: dict[str, KGNode] = {}
    for n in kg.nodes:
        if n.id in by_id:
            raise _error(source, f"node {n.id!r}", "duplicate id")
        if not n.descriptions or any(not d.strip() for d in n.descriptions):
            raise _error(source, f"node {n.id!r}", "needs at least one non-empty description")
        by_id[n.id] = n
    roots = [n.id for n in kg.nodes if n.level == 0]
    if len(roots) != 1:
        raise _error(source, "top level", f"needs exactly one level-0 mission node, found {roots or 'none'}")
    for n in kg.nodes:
        where = f"node {n.id!r}"
        if n.level == 0:
            if n.parent is not None:
                raise _error(source, where, f"the level-0 mission node cannot have a parent ({n.parent!r})")
            continue
        if n.parent is None:
            raise _error(source, where, f"level-{n.level} node ({LEVEL_NAMES[n.level]}) is missing its parent")
        if n.parent not in by_id:
            raise _error(source, where, f"parent {n.parent!r} does not exist")
    # Cycle check before the level check, so a loop is reported as a loop.
    for n in kg.nodes:
        trail, cur = [n.id], n.parent
        while cur is not None:
            if cur in trail:
                loop = trail[trail.index(cur):] + [cur]
                raise _error(source, f"node {n.id!r}", f"cycle in the hierarchy: {' -> '.join(loop)}")
            trail.append(cur)
            cur = by_id[cur].parent
    for n in kg.nodes:
        if n.parent is not None and by_id[n.parent].level != n.level - 1:
            raise _error(source, f"node {n.id!r}",
                         f"level {n.level} but its parent {n.parent!r} has level {by_id[n.parent].level} "
                         f"(must be {n.level - 1})")
    for a, b in kg.related:
        for end in (a, b):
            if end not in by_id:
                raise _error(source, f"node {a!r}", f"related node {end!r} does not exist")
        if a == b:
            raise _error(source, f"node {a!r}", "is related to itself")


def load_kg(path: str | pathlib.Path) -> KnowledgeGraph:
    """Reads and validates a knowledge-graph YAML file."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KGValidationError(f"{path}: cannot read knowledge graph: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KGValidationError(f"{path}: not valid YAML: {e}") from e
    return parse_kg(data, source=str(path))


def kg_to_dict(kg: KnowledgeGraph) -> dict:
    """The YAML-ready mapping of `kg` (inverse of `parse_kg`)."""
    nodes = []
    for n in kg.nodes:
        d: dict[str, Any] = {"id": n.id, "level": n.level, "name": n.name}
        if n.parent is not None:
            d["parent"] = n.parent
        d["descriptions"] = list(n.descriptions)
        if n.aliases:
            d["aliases"] = list(n.aliases)
        nodes.append(d)
    out: dict[str, Any] = {"name": kg.name}
    if kg.description:
        out["description"] = kg.description
    out["nodes"] = nodes
    if kg.related:
        out["edges"] = [{"type": "related", "source": a, "target": b} for a, b in kg.related]
    if kg.missions:
        out["missions"] = dict(kg.missions)
    return out


def save_kg(kg: KnowledgeGraph, path: str | pathlib.Path) -> None:
    """Writes `kg` as YAML."""
    pathlib.Path(path).write_text(yaml.safe_dump(kg_to_dict(kg), sort_keys=False, allow_unicode=True,
                                                 width=110), encoding="utf-8")


def graph_path(name_or_path: str) -> pathlib.Path:
    """The file of a `gnn.kg` value: a YAML path, or the name of a graph shipped with the package."""
    if name_or_path.endswith((".yaml", ".yml")):
        path = pathlib.Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"gnn.kg={name_or_path}: no such knowledge-graph file")
        return path
    return shipped_kg_path(name_or_path)


def shipped_kg_path(name: str) -> pathlib.Path:
    """Path of a graph shipped with the package in `pclip_jax/graph/shipped/` (e.g. 'ndpi', 'iscx_vpn2016',
    'ustc_tfc2016'); package data, so a non-editable install finds it from any directory."""
    path = pathlib.Path(__file__).resolve().parent / "shipped" / f"{name}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"gnn.kg={name!r}: no such shipped knowledge graph (available: "
                                f"{', '.join(avail)}; or give a path to a YAML file)")
    return path


def display_name(name: str) -> str:
    """How a class name reads in a sentence: `FileTransfer` → `File Transfer`,
    `VPN/Tunnel` → `VPN or Tunnel`, `Skype_Teams` → `Skype Teams` (acronyms like VoIP kept)."""
    s = re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", " ", name.strip())
    s = s.replace("_", " ").replace("/", " or ")
    return " ".join(s.split())
