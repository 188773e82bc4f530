"""`dce`: drop what no longer reaches the output (as JAX's `dce_jaxpr`).

A cell's save is part of the cell, so it lives as long as the cell does; a `Prefetch` is an
effect kept while the cell whose read it stages is live.
"""

from __future__ import annotations

import attrs
import networkx as nx

from edit.graph import Graph, Output, Prefetch
from edit.passes.base import Pass, register_pass


def dce(graph: Graph) -> Graph:
    """Remove every node from which the `Output` cannot be reached (prefetches of live cells stay);
    returns the same graph when nothing is dead."""
    outputs = graph.nodes(Output)
    if not outputs:
        return graph
    live = set(outputs)
    for out in outputs:
        live |= nx.ancestors(graph.nx, out)
    dead = [n for n in graph.nx.nodes if n not in live
            and not (isinstance(n, Prefetch) and any(c in live for c in graph.consumers(n, kind=None)))]
    if not dead:
        return graph
    new = graph.copy()
    for node in dead:
        new.remove_node(node)
    return new


@register_pass
@attrs.frozen
class Dce(Pass):
    """`dce` as a pipeline pass."""

    name = "dce"

    def run(self, graph: Graph) -> Graph:
        return dce(graph)
