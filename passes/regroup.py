"""`regroup`: change the cache-unit granularity of a plain (policy-free) graph."""

from __future__ import annotations

import attrs

from edit.graph import Cell, Graph, Node, Unit, check_granularity, unit_ranges
from edit.passes.base import Pass, register_pass


def forwards(graph: Graph, kind: type = Unit) -> dict[tuple[int, str], list[Node]]:
    """Nodes of `kind` grouped by (step, branch), each list ordered by unit index."""
    groups: dict[tuple[int, str], list[Node]] = {}
    for node in graph.nodes(kind):
        groups.setdefault((node.step, node.branch), []).append(node)
    return {k: sorted(v, key=lambda n: n.unit) for k, v in sorted(groups.items())}


def chain_units(graph: Graph, units: list[Unit], ranges: tuple[tuple[int, int], ...],
                probe: type | None = None) -> tuple[Node | None, list[Unit]]:
    """Replace the unit chain `units` of one forward (in place) by new units over `ranges`, same wiring.

    With `probe` (a node kind such as `Probe`), that node is put first and feeds the chain.
    Returns (the probe or None, the new units).
    """
    first, last = units[0], units[-1]
    inputs = graph.inputs_of(first)
    (src, select), (ctx, _) = inputs["hidden"], inputs["ctx"]
    consumers = graph.out_edges(last)
    for unit in units:
        graph.remove_node(unit)
    head = None
    if probe is not None:
        head = graph.add_node(probe(first.step, first.branch, model=first.model))
        graph.add_edge(src, head, port="hidden", select=select)
        graph.add_edge(ctx, head, port="ctx")
        src, select = head, "hidden"
    made = []
    for index, blocks in enumerate(ranges):
        unit = graph.add_node(Unit(first.step, first.branch, index, blocks, first.model))
        graph.add_edge(src, unit, port="hidden", select=select)
        graph.add_edge(ctx, unit, port="ctx")
        src, select = unit, None
        made.append(unit)
    for v, d in consumers:
        graph.add_edge(src, v, kind=d["kind"], port=d["port"], select=d.get("select"))
    return head, made


def regroup(graph: Graph, granularity: str | int) -> Graph:
    """Units of `"stack"` (one unit), `"per_block"`, or int k blocks (the last group may be shorter).

    Apply before `apply_policy`; returns the same graph when the granularity does not change.
    """
    spec = graph.spec
    check_granularity(granularity, spec.num_blocks)
    if graph.nodes(Cell):
        raise ValueError("graph: regroup must run before apply_policy (the graph already has cache cells)")
    if granularity == spec.granularity:
        return graph
    new = graph.copy()
    new.spec = attrs.evolve(spec, granularity=granularity)
    ranges = unit_ranges(granularity, spec.num_blocks)
    for units in forwards(new).values():
        chain_units(new, units, ranges)
    return new


@register_pass
@attrs.frozen
class Regroup(Pass):
    """`regroup(granularity=...)` as a pipeline pass."""

    name = "regroup"
    granularity: str | int = attrs.field(default="stack", metadata={"text": str})

    def run(self, graph: Graph) -> Graph:
        return regroup(graph, self.granularity)
