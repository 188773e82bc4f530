"""`regroup`: change the cache-unit granularity of a plain (policy-free) graph."""

from __future__ import annotations

from edit.graph import Decide, Graph, Node, Unit, check_granularity, unit_ranges
from edit.passes._edit import out_edges, units_by_forward, with_spec


def chain_units(graph: Graph, units: list[Unit], ranges: tuple[tuple[int, int], ...],
                probe: type | None = None) -> tuple[Node | None, list[Unit]]:
    """Replace the unit chain `units` of one forward by new units over `ranges`, same wiring.

    With `probe` (a node kind such as `Probe`), that node is put first and feeds the chain.
    Returns (the probe or None, the new units).
    """
    first, last = units[0], units[-1]
    inputs = graph.inputs_of(first)
    (src, select), (ctx, _) = inputs["hidden"], inputs["ctx"]
    consumers = out_edges(graph, last)
    for unit in units:
        graph.remove_node(unit)
    head = None
    if probe is not None:
        head = graph.add_node(probe(first.step, first.branch))
        graph.add_edge(src, head, port="hidden", select=select)
        graph.add_edge(ctx, head, port="ctx")
        src, select = head, "hidden"
    made = []
    for index, blocks in enumerate(ranges):
        unit = graph.add_node(Unit(first.step, first.branch, index, blocks))
        graph.add_edge(src, unit, port="hidden", select=select)
        graph.add_edge(ctx, unit, port="ctx")
        src, select = unit, None
        made.append(unit)
    for v, d in consumers:
        graph.nx.add_edge(src, v, **d)
    return head, made


def regroup(graph: Graph, granularity: str | int) -> Graph:
    """Units of `"stack"` (one unit), `"per_block"`, or int k blocks (the last group may be shorter).

    Apply before `apply_policy`; returns the same graph when the granularity does not change.
    """
    spec = graph.spec
    check_granularity(granularity, spec.num_blocks)
    if any(isinstance(n, Decide) for n in graph.nx.nodes):
        raise ValueError("graph: regroup must run before apply_policy (the graph already has decisions)")
    if granularity == spec.granularity:
        return graph
    new = with_spec(graph, granularity=granularity)
    ranges = unit_ranges(granularity, spec.num_blocks)
    for units in units_by_forward(new).values():
        chain_units(new, units, ranges)
    return new
