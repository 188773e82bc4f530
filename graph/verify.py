"""`verify(graph)`: structural checks that make a broken graph fail near its cause."""

from __future__ import annotations

from collections import Counter

import networkx as nx

from edit.graph.core import Graph
from edit.graph.nodes import DATA, EDGE_KINDS, GUARDS, Decide, Node


class GraphError(ValueError):
    """A malformed graph; the message names the offending node."""


def _name(node: object) -> str:
    return f"%{node.name}" if isinstance(node, Node) else repr(node)


def verify(graph: Graph) -> Graph:
    """Check the graph and return it unchanged; raise `GraphError` naming the first bad node.

    Checks: every endpoint is a node record added to the graph (no dangling edges); edge kinds are
    known; the graph is acyclic; every node receives each of its input ports exactly once and no
    unknown port; guard edges leave a Decide; kind-specific rules (`Node.check`, e.g. a load needs an earlier save).
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph: expected an edit.graph.Graph, got {type(graph).__name__}")
    g = graph.nx
    for node, data in g.nodes(data=True):
        if not isinstance(node, Node) or not data.get("record"):
            edge = next(iter(g.in_edges(node)), None) or next(iter(g.out_edges(node)), None)
            where = f"edge {_name(edge[0])} -> {_name(edge[1])}" if edge else "node"
            raise GraphError(f"dangling {where}: {_name(node)} is not a node of the graph "
                             "(it was only reached through an edge; add it with Graph.add_node)")
    for u, v, data in g.edges(data=True):
        if data.get("kind") not in EDGE_KINDS:
            raise GraphError(f"edge {_name(u)} -> {_name(v)}: kind {data.get('kind')!r} is not one of {EDGE_KINDS}")
        if data["kind"] == DATA and not data.get("port"):
            raise GraphError(f"data edge {_name(u)} -> {_name(v)} has no port")
        if data["kind"] in GUARDS and not isinstance(u, Decide):
            raise GraphError(f"{_name(v)}: guard edge ({data['kind']}) from {_name(u)}, which is not a Decide")
    cycle = None
    if not nx.is_directed_acyclic_graph(g):  # linear time; find_cycle only to name the cycle
        cycle = nx.find_cycle(g)
    if cycle:
        path = " -> ".join(_name(e[0]) for e in cycle) + f" -> {_name(cycle[0][0])}"
        raise GraphError(f"cycle through {_name(cycle[0][0])}: {path}")
    for node in graph.order():
        ports = Counter(d["port"] for _, d in graph.in_edges(node, DATA))
        for port in node.inputs:
            if ports[port] == 0:
                raise GraphError(f"{_name(node)}: input {port!r} has no producer")
        for port, count in ports.items():
            if port not in node.inputs and port not in node.optional:
                raise GraphError(f"{_name(node)}: unknown input port {port!r} "
                                 f"(expects {node.inputs + node.optional})")
            if count > 1:
                raise GraphError(f"{_name(node)}: input {port!r} has {count} producers")
        problem = node.check(graph)
        if problem:
            raise GraphError(f"{_name(node)}: {problem}")
    return graph
