"""Small graph-surgery helpers shared by the passes."""

from __future__ import annotations

from collections import defaultdict

import attrs

from edit.graph import Graph, Node, Unit


def units_by_forward(graph: Graph, kind: type = Unit) -> dict[tuple[int, str], list[Node]]:
    """Nodes of `kind` grouped by (step, branch), each list ordered by unit index."""
    groups: dict[tuple[int, str], list[Node]] = defaultdict(list)
    for node in graph.nx.nodes:
        if isinstance(node, kind):
            groups[(node.step, node.branch)].append(node)
    return {k: sorted(v, key=lambda n: n.unit) for k, v in sorted(groups.items())}


def out_edges(graph: Graph, node: Node) -> list[tuple[Node, dict]]:
    return [(v, dict(d)) for _, v, d in graph.nx.out_edges(node, data=True)]


def redirect_outputs(graph: Graph, old: Node, new: Node) -> None:
    """Move every outgoing edge of `old` to leave `new` instead."""
    for v, d in out_edges(graph, old):
        graph.nx.remove_edge(old, v)
        graph.nx.add_edge(new, v, **d)


def replace_node(graph: Graph, old: Node, new: Node) -> None:
    """Swap a record for another (e.g. `attrs.evolve`d) keeping all its edges."""
    graph.add_node(new)
    for u, _, d in list(graph.nx.in_edges(old, data=True)):
        graph.nx.add_edge(u, new, **d)
    for v, d in out_edges(graph, old):
        graph.nx.add_edge(new, v, **d)
    graph.nx.remove_node(old)


def with_spec(graph: Graph, **changes) -> Graph:
    new = graph.copy()
    new.spec = attrs.evolve(graph.spec, **changes)
    return new
