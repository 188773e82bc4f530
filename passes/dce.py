"""`dce`: drop what no longer reaches the output (as JAX's `dce_jaxpr`).

A cell's save is part of the cell, so it lives as long as the cell does; a `Prefetch` is an
effect kept while a live cell reads the key it stages (the cell's declared effects say which).
"""

from __future__ import annotations

import attrs
import networkx as nx

from edit.graph import Cell, Graph, Output, Prefetch
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
    dead = [n for n in graph.nx.nodes if n not in live and not (isinstance(n, Prefetch) and _stages_a_live_read(graph, n, live))]
    if not dead:
        return graph
    new = graph.copy()
    for node in dead:
        new.remove_node(node)
    return new


def _stages_a_live_read(graph: Graph, prefetch: Prefetch, live: set) -> bool:
    """A prefetch is live while a live cell reads the key it stages (by the cell's declared effects)."""
    return any(c in live and isinstance(c, Cell) and prefetch.key in graph.effects(c).reads
               for c in graph.consumers(prefetch, kind=None))


@register_pass
@attrs.frozen
class Dce(Pass):
    """`dce` as a pipeline pass."""

    name = "dce"

    def run(self, graph: Graph) -> Graph:
        return dce(graph)
