"""`Graph`: a typed dataflow graph of node records over a networkx MultiDiGraph."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import networkx as nx

from edit.graph.nodes import DATA, EDGE_KINDS, Node
from edit.graph.spec import RunSpec


class Graph:
    """A denoising run as a dataflow graph.

    Nodes are `Node` records; each edge has a `kind` (data / skip / reuse / prefetch), the
    consumer's input `port`, and optionally `select`, the attribute of the producer's value it
    carries (e.g. the patch-embedded `hidden` of an `Embed`). Execution order is a deterministic
    topological order (`Graph.order`).
    """

    def __init__(self, spec: RunSpec | None = None, nx_graph: nx.MultiDiGraph | None = None):
        self.spec = spec
        self.nx = nx_graph if nx_graph is not None else nx.MultiDiGraph()

    # -- construction -------------------------------------------------------------------------
    def add_node(self, node: Node) -> Node:
        if not isinstance(node, Node):
            raise TypeError(f"node: expected a edit.graph Node record, got {type(node).__name__}")
        self.nx.add_node(node, record=True)
        return node

    def add_edge(self, src: Node, dst: Node, *, kind: str = DATA, port: str | None = None,
                 select: str | None = None) -> None:
        """Connect two nodes already in the graph."""
        if kind not in EDGE_KINDS:
            raise ValueError(f"kind: expected one of {EDGE_KINDS}, got {kind!r}")
        for end, what in ((src, "src"), (dst, "dst")):
            if end not in self.nx:
                raise ValueError(f"{what}: {getattr(end, 'name', end)!r} is not a node of the graph")
        self.nx.add_edge(src, dst, kind=kind, port=port, select=select)

    def remove_node(self, node: Node) -> None:
        self.nx.remove_node(node)

    def copy(self) -> Graph:
        return Graph(self.spec, self.nx.copy())

    # -- queries ------------------------------------------------------------------------------
    def __contains__(self, node: object) -> bool:
        return node in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.order())

    def nodes(self, kind: type | tuple[type, ...] = Node) -> list[Node]:
        """Nodes that are instances of `kind`, in execution order."""
        return [n for n in self.order() if isinstance(n, kind)]

    def edges(self, kind: str | None = None) -> list[tuple[Node, Node, dict[str, Any]]]:
        return [(u, v, d) for u, v, d in self.nx.edges(data=True) if kind is None or d["kind"] == kind]

    def in_edges(self, node: Node, kind: str | None = DATA) -> list[tuple[Node, dict[str, Any]]]:
        """(producer, edge data) pairs feeding `node`, sorted by port for stable printing."""
        found = [(u, d) for u, _, d in self.nx.in_edges(node, data=True)
                 if kind is None or d["kind"] == kind]
        return sorted(found, key=lambda item: (item[1].get("port") or "", item[0].name))

    def inputs_of(self, node: Node) -> dict[str, tuple[Node, str | None]]:
        """Data inputs of `node` by port: port -> (producer, select)."""
        return {d["port"]: (u, d.get("select")) for u, d in self.in_edges(node, DATA)}

    def consumers(self, node: Node, kind: str | None = DATA) -> list[Node]:
        return sorted({v for _, v, d in self.nx.out_edges(node, data=True)
                       if kind is None or d["kind"] == kind}, key=Node.order_key)

    def order(self) -> list[Node]:
        """Deterministic topological order; ties follow diffusers' execution order."""
        return list(nx.lexicographical_topological_sort(self.nx, key=_sort_key))

    def find(self, kind: type, **fields: Any) -> list[Node]:
        """Nodes of `kind` whose fields equal `fields`, e.g. `g.find(Unit, step=3, branch="cond")`."""
        return [n for n in self.nodes(kind)
                if all(getattr(n, k, object()) == v for k, v in fields.items())]

    # -- views --------------------------------------------------------------------------------
    def to_text(self) -> str:
        from edit.graph.text import to_text
        return to_text(self)

    def summary(self) -> str:
        from edit.graph.text import summary
        return summary(self)

    def __repr__(self) -> str:
        return f"<Graph {len(self)} nodes, {self.nx.number_of_edges()} edges>"


def _sort_key(node: Any) -> tuple:
    # dangling endpoints (not records) sort last; `verify` reports them by name
    if isinstance(node, Node):
        return (0,) + node.order_key()
    return (1, repr(node))


def same_structure(a: Graph, b: Graph) -> bool:
    """True when both graphs hold the same records and the same typed edges."""
    def edge_set(g: Graph) -> set:
        return {(u, v, d["kind"], d.get("port"), d.get("select")) for u, v, d in g.edges()}
    return set(a.nx.nodes) == set(b.nx.nodes) and edge_set(a) == edge_set(b)

