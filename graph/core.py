"""`Graph`: a typed dataflow graph of node records over a networkx MultiDiGraph.

The graph keeps, exact through its own methods, a cached execution order and indexes by name, by
(kind, step) and by residual key, so queries cost O(answer) rather than O(graph). Passes edit a
graph only through these methods (never `graph.nx` directly), which is what keeps them exact.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

import networkx as nx

from edit.graph.effects import Effects, cell_effects, latest_key, writes_latest
from edit.graph.nodes import DATA, EDGE_KINDS, Cell, Node, Unit
from edit.graph.spec import RunSpec


def _cell_group(cell: Cell) -> tuple:
    return (cell.model, cell.generation, cell.branch, cell.unit)


class Graph:
    """A denoising run as a dataflow graph.

    Nodes are `Node` records; each edge has a `kind` (data / prefetch), the consumer's input
    `port`, and optionally `select`, the attribute of the producer's value it carries (e.g. the
    patch-embedded `hidden` of an `Embed`). Execution order is a deterministic topological order
    (`Graph.order`), ties broken by diffusers' execution order.
    """

    def __init__(self, spec: RunSpec | None = None):
        self.spec = spec
        self.nx = nx.MultiDiGraph()
        self._order: list[Node] | None = None
        self._order_signature = (0, 0)
        self._by_name: dict[str, Node] = {}
        self._by_step: dict[tuple[type, int | None], dict[Node, None]] = {}  # dicts: O(1) removal, insertion order
        self._types: dict[type, dict[int | None, None]] = {}  # kind -> the steps it occurs at
        self._cells: dict[tuple, list[Cell]] = {}  # residual group -> cells sorted by step
        self._derived: dict | None = None  # effects and latest writers, until the next node edit

    # -- construction -------------------------------------------------------------------------
    def add_node(self, node: Node) -> Node:
        """Add a record; a different record with the same printed name is refused."""
        if not isinstance(node, Node):
            raise TypeError(f"node: expected an edit.graph Node record, got {type(node).__name__}")
        if node in self.nx:
            return node
        other = self._by_name.get(node.name)
        if other is not None:
            raise ValueError(f"node: %{node.name} is already in the graph as another record ({other!r})")
        self.nx.add_node(node)
        self._index(node)
        self._order = None
        if isinstance(node, Cell):  # only cells declare effects
            self._derived = None
        return node

    def _index(self, node: Node) -> None:
        self._by_name[node.name] = node
        step = getattr(node, "step", None)
        self._by_step.setdefault((type(node), step), {})[node] = None
        self._types.setdefault(type(node), {})[step] = None
        if isinstance(node, Cell):
            group = self._cells.setdefault(_cell_group(node), [])
            if not group or group[-1].step < node.step:  # plans are built and loaded in step order
                group.append(node)
            else:
                bisect.insort(group, node, key=lambda c: c.step)

    def _reindex(self, old: Node, new: Node) -> None:
        self._by_name[new.name] = new
        bucket = self._by_step[(type(old), getattr(old, "step", None))]
        del bucket[old]
        bucket[new] = None
        if isinstance(old, Cell):
            group = self._cells[_cell_group(old)]
            group[bisect.bisect_left(group, old.step, key=lambda c: c.step)] = new

    def _unindex(self, node: Node) -> None:
        del self._by_name[node.name]
        del self._by_step[(type(node), getattr(node, "step", None))][node]
        if isinstance(node, Cell):
            self._cells[_cell_group(node)].remove(node)

    def add_edge(self, src: Node, dst: Node, *, kind: str = DATA, port: str | None = None,
                 select: str | None = None) -> None:
        """Connect two nodes already in the graph."""
        if kind not in EDGE_KINDS:
            raise ValueError(f"kind: expected one of {EDGE_KINDS}, got {kind!r}")
        for end, what in ((src, "src"), (dst, "dst")):
            if end not in self.nx:
                raise ValueError(f"{what}: {getattr(end, 'name', end)!r} is not a node of the graph")
        if kind == DATA and not port:
            raise ValueError(f"port: a data edge %{src.name} -> %{dst.name} needs the consumer's port")
        # written into the adjacency directly: networkx's add_edge costs several times more
        g = self.nx
        keydict = g._succ[src].get(dst)
        if keydict is None:
            keydict = g._succ[src][dst] = {}
            g._pred[dst][src] = keydict
        key = len(keydict)
        while key in keydict:
            key += 1
        keydict[key] = {"kind": kind, "port": port, "select": select}
        self._order = None

    def remove_edge(self, src: Node, dst: Node, *, kind: str | None = None, port: str | None = None) -> None:
        """Remove the edges src -> dst (of `kind` / into `port` when given); at least one must exist."""
        data = self.nx.get_edge_data(src, dst) or {}
        keys = [k for k, d in data.items() if (kind is None or d["kind"] == kind) and (port is None or d["port"] == port)]
        if not keys:
            raise ValueError(f"edge: no edge %{src.name} -> %{dst.name}" + (f" of kind {kind}" if kind else "")
                             + (f" into port {port!r}" if port else ""))
        for k in keys:
            self.nx.remove_edge(src, dst, key=k)
        self._order = None

    def remove_node(self, node: Node) -> None:
        if node not in self.nx:
            raise ValueError(f"node: %{getattr(node, 'name', node)} is not in the graph")
        self.nx.remove_node(node)
        self._unindex(node)
        self._order = None
        if isinstance(node, Cell):
            self._derived = None

    def replace_node(self, old: Node, new: Node) -> Node:
        """Swap a record for another (e.g. an `attrs.evolve`d one) keeping all its edges."""
        if old not in self.nx:
            raise ValueError(f"old: %{getattr(old, 'name', old)} is not in the graph")
        if new in self.nx:
            raise ValueError(f"new: %{new.name} is already in the graph")
        g = self.nx
        if type(old) is type(new) and old.name == new.name and getattr(old, "step", None) == getattr(new, "step", None) \
                and (not isinstance(old, Cell) or _cell_group(old) == _cell_group(new)):
            self._reindex(old, new)  # the same slot in every index: swap in place
        else:
            self._unindex(old)
            self._index(new)
        # rewire the adjacency in place: O(degree), where networkx would re-add edge by edge
        succ, pred = g._succ, g._pred
        succ[new], pred[new] = succ.pop(old), pred.pop(old)
        g._node[new] = g._node.pop(old)
        for v in succ[new]:
            pred[v][new] = pred[v].pop(old)
        for u in pred[new]:
            succ[u][new] = succ[u].pop(old)
        self._order = None
        if isinstance(old, Cell) or isinstance(new, Cell):
            self._derived = None
        return new

    def replace_all_uses_with(self, old: Node, new: Node) -> None:
        """Every edge leaving `old` leaves `new` instead (as torch.fx's `Node.replace_all_uses_with`)."""
        if new not in self.nx:
            raise ValueError(f"new: %{new.name} is not a node of the graph")
        for _, v, d in list(self.nx.out_edges(old, data=True)):
            self.nx.add_edge(new, v, **d)
        for v in list(self.nx.successors(old)):
            self.nx.remove_edges_from([(old, v, k) for k in list(self.nx[old][v])])
        self._order = None

    def copy(self) -> Graph:
        new = Graph.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.nx = _copy_nx(self.nx)
        new._by_name = dict(self._by_name)
        new._by_step = {k: dict(v) for k, v in self._by_step.items()}
        new._types = {k: dict(v) for k, v in self._types.items()}
        new._cells = {k: list(v) for k, v in self._cells.items()}
        new._order = None if self._order is None else list(self._order)
        return new

    # -- queries ------------------------------------------------------------------------------
    def __contains__(self, node: object) -> bool:
        return node in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.order())

    def get(self, name: str, default: Any = None) -> Node | Any:
        """The node printed as `%name`, or `default`."""
        return self._by_name.get(name.lstrip("%"), default)

    def node(self, name: str) -> Node:
        """The node printed as `%name` (with or without the `%`)."""
        found = self._by_name.get(name.lstrip("%"))
        if found is None:
            raise KeyError(f"name: no node %{name.lstrip('%')} in the graph")
        return found

    def nodes(self, kind: type | tuple[type, ...] = Node) -> list[Node]:
        """Nodes that are instances of `kind`, in execution order."""
        if kind is Node:
            return self.order()
        return sorted(self._of_kind(kind, None, False), key=Node.order_key)

    def _of_kind(self, kind: type | tuple[type, ...], step: int | None, by_step: bool) -> Iterable[Node]:
        for cls, steps in self._types.items():
            if not issubclass(cls, kind):
                continue
            if by_step:
                yield from self._by_step.get((cls, step), ())
            else:
                for s in steps:
                    yield from self._by_step.get((cls, s), ())

    def find(self, kind: type | tuple[type, ...] = Node, **fields: Any) -> list[Node]:
        """Nodes of `kind` whose fields equal `fields`, e.g. `g.find(Cell, step=3, branch="cond")`,
        in execution order."""
        found = self._of_kind(kind, fields.get("step"), "step" in fields)
        missing = object()
        return sorted((n for n in found if all(getattr(n, k, missing) == v for k, v in fields.items())),
                      key=Node.order_key)

    def cells(self, group: tuple | None = None) -> list[Cell]:
        """Cells in execution order; with `group` = (model, generation, branch, unit), that unit's cells by step."""
        if group is not None:
            return list(self._cells.get(group, ()))
        return self.nodes(Cell)

    def cell_at(self, step: int, branch: str, unit: int, model: str | None = None) -> Cell | None:
        node = self._by_name.get(f"s{step}.{branch}.u{unit}")
        if isinstance(node, Cell) and (model is None or node.model == model):
            return node
        return None

    def previous_cell(self, cell: Cell) -> Cell | None:
        """The cell of the same unit at the closest earlier step."""
        group = self._cells.get(_cell_group(cell), [])
        i = bisect.bisect_left(group, cell.step, key=lambda c: c.step)
        return group[i - 1] if i > 0 else None

    def latest_writer(self, cell: Cell, key: tuple | None = None) -> Cell | None:
        """The last cell before `cell` of its unit whose compute or hit path writes `key` (default:
        the unit's latest-residual key), by the cells' declared effects (`edit.graph.effects`)."""
        group = self._cells.get(_cell_group(cell), [])
        i = bisect.bisect_left(group, cell.step, key=lambda c: c.step)
        if key is None or key == latest_key(cell):
            return self._latest_writers(_cell_group(cell), group)[i] if i else None
        if len(key) != 7 or key[1] != cell.generation:
            return None  # another generation's step key: written before this run
        src = self.cell_at(key[4], cell.branch, cell.unit, cell.model)  # a step key: only its own step writes it
        if src is None or src.step >= cell.step:
            return None
        fx = self.effects(src)
        return src if key in fx.compute_writes + fx.reuse_writes else None

    def _derived_cache(self) -> dict:
        derived = getattr(self, "_derived", None)
        if derived is None or derived["spec"] is not self.spec:  # keys carry the spec's timesteps and shape
            derived = self._derived = {"spec": self.spec, "effects": {}, "writers": {}, "reads": {}}
        return derived

    def _latest_writers(self, group_key: tuple, group: list[Cell]) -> list[Cell | None]:
        """For each position i of a unit's cells, the last cell before it that writes the unit's
        latest residual (computed once per graph version)."""
        writers = self._derived_cache()["writers"]
        found = writers.get(group_key)
        if found is None or len(found) != len(group):
            found, last = [], None
            for c in group:
                found.append(last)
                if writes_latest(c):
                    last = c
            writers[group_key] = found
        return found

    def effects(self, cell: Cell) -> Effects:
        """The keys `cell` reads and writes on each path (`edit.graph.effects.cell_effects`, cached
        until the next node edit)."""
        effects = self._derived_cache()["effects"]
        fx = effects.get(cell)
        if fx is None:
            fx = effects[cell] = cell_effects(self, cell)
        return fx

    def reads(self, cell: Cell, key: tuple) -> bool:
        """Whether the reuse path of `cell` reads `key` (O(1): a window reads one key per generation)."""
        sets = self._derived_cache()["reads"]
        found = sets.get(cell)
        if found is None:
            found = sets[cell] = frozenset(self.effects(cell).reads)
        return key in found

    def read_keys(self, cell: Cell) -> list[tuple]:
        """Every store key the reuse path of `cell` reads (several for a cross-generation window)."""
        return list(self.effects(cell).reads)

    def read_key(self, cell: Cell) -> tuple | None:
        """The store key the reuse path of `cell` reads (the first, for a window; None: it reads none)."""
        reads = self.effects(cell).reads
        return reads[0] if reads else None

    def units_per_forward(self) -> int:
        """Block groups (units, cells) in one (step, branch) forward: what a policy's context reports."""
        counts: dict[tuple, int] = {}
        for node in self._of_kind((Unit, Cell), None, False):
            key = (node.step, node.branch)
            counts[key] = counts.get(key, 0) + 1
        return max(counts.values(), default=0)

    def edges(self, kind: str | None = None) -> list[tuple[Node, Node, dict[str, Any]]]:
        return [(u, v, d) for u, v, d in self.nx.edges(data=True) if kind is None or d["kind"] == kind]

    def in_edges(self, node: Node, kind: str | None = DATA) -> list[tuple[Node, dict[str, Any]]]:
        """(producer, edge data) pairs feeding `node`, sorted by port for stable printing."""
        found = [(u, d) for u, _, d in self.nx.in_edges(node, data=True)
                 if kind is None or d["kind"] == kind]
        return sorted(found, key=lambda item: (item[1].get("port") or "", item[0].name))

    def out_edges(self, node: Node, kind: str | None = None) -> list[tuple[Node, dict[str, Any]]]:
        return [(v, d) for _, v, d in self.nx.out_edges(node, data=True) if kind is None or d["kind"] == kind]

    def inputs_of(self, node: Node) -> dict[str, tuple[Node, str | None]]:
        """Data inputs of `node` by port: port -> (producer, select)."""
        return {d["port"]: (u, d.get("select")) for u, keydict in self.nx._pred[node].items()
                for d in keydict.values() if d["kind"] == DATA}

    def consumers(self, node: Node, kind: str | None = DATA) -> list[Node]:
        return sorted({v for _, v, d in self.nx.out_edges(node, data=True)
                       if kind is None or d["kind"] == kind}, key=Node.order_key)

    def order(self) -> list[Node]:
        """Deterministic topological order; ties follow diffusers' execution order. Cached until
        the next edit."""
        signature = (self.nx.number_of_nodes(), self.nx.number_of_edges())
        if self._order is None or self._order_signature != signature:  # also catches edits made on .nx
            self._order = _ordered(self.nx)
            self._order_signature = signature
        return list(self._order)

    # -- views --------------------------------------------------------------------------------
    def to_text(self) -> str:
        from edit.graph.text import to_text
        return to_text(self)

    def summary(self, trace: dict | None = None) -> str:
        from edit.graph.text import summary
        return summary(self, trace)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self)} nodes, {self.nx.number_of_edges()} edges>"


def _sort_key(node: Any) -> tuple:
    # dangling endpoints (not records) sort last; `verify` reports them by name
    if isinstance(node, Node):
        return (0,) + node.order_key()
    return (1, repr(node))


def _ordered(g: nx.MultiDiGraph) -> list[Node]:
    """The lexicographic topological order by `_sort_key`. When sorting by the key alone already
    respects every edge (the lowered graphs, and any that keep diffusers' order), that sort is the
    answer and costs O(n log n) in C; otherwise networkx's lexicographic topological sort."""
    nodes = sorted(g.nodes, key=_sort_key)
    pos = {n: i for i, n in enumerate(nodes)}
    if all(pos[u] < pos[v] for u, v in g.edges()):
        return nodes
    return list(nx.lexicographical_topological_sort(g, key=_sort_key))


def _copy_nx(g: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """A copy of `g` with fresh edge-attribute dicts, built straight from its adjacency (networkx's
    own `copy` re-adds edge by edge, the costliest part of a pass on a large plan)."""
    h = g.__class__()
    h.graph.update(g.graph)
    h._node = {n: dict(d) for n, d in g._node.items()}
    succ: dict = {}
    pred: dict = {n: {} for n in g._node}
    for u, nbrs in g._succ.items():
        out = succ[u] = {}
        for v, keydict in nbrs.items():
            copied = {k: dict(d) for k, d in keydict.items()}
            out[v] = copied
            pred[v][u] = copied  # successor and predecessor views share one key dict, as networkx's do
    h._succ = h._adj = succ
    h._pred = pred
    return h


def same_structure(a: Graph, b: Graph) -> bool:
    """True when both graphs hold the same records and the same typed edges."""
    def edge_set(g: Graph) -> set:
        return {(u, v, d["kind"], d.get("port"), d.get("select")) for u, v, d in g.edges()}
    return set(a.nx.nodes) == set(b.nx.nodes) and edge_set(a) == edge_set(b)
