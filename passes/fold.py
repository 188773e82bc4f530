"""`fold_static`: a policy whose decisions are known at compile time becomes a fixed skip schedule.

The decisions come from `decisions(graph) -> {(step, branch, unit): compute}`, bound when the
pipeline is built (`static_decisions`: the policy evaluated on the model's static signals with the
decision function the runtime uses). The pass itself only inlines each cell's chosen region with
`set_cells`, the public editing API.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from edit.graph import COMPUTE, DECIDE, REUSE_MODE, Cell, Graph
from edit.passes.base import Pass, bound, paused_gc, register_pass
from edit.passes.edit import set_cells
from edit.passes.policy import CachePolicy, decide, make_context, memoized_relative_l1, policy_state

Decisions = Callable[[Graph], dict[tuple[int, str, int], bool]]


def static_decisions(graph: Graph, policy: CachePolicy, signals: Callable[[int], dict]) -> dict[tuple, bool]:
    """Decide, ahead of time, every cell the policy sees from the static `signals(step)`: fresh policy
    states, execution order, the runtime's decision function (`decide`). Pure: no hook fires."""
    states: dict = {}
    cells = [c for c in graph.nodes(Cell) if c.mode == DECIDE or c.consult]
    num_steps, num_units = graph.spec.num_steps, graph.units_per_forward()
    by_step: dict[int, dict] = {}
    out = {}
    with memoized_relative_l1(), paused_gc():
        for cell in cells:
            if cell.step not in by_step:
                by_step[cell.step] = signals(cell.step)
            context = make_context(cell, policy_state(policy, states, cell), num_steps=num_steps,
                                   num_units=num_units, signals=by_step[cell.step])
            out[cell.cell] = decide(policy, cell, context)
    return out


def fold_static(graph: Graph, decisions: Decisions | None) -> Graph:
    """Inline the path `decisions` chooses for every cell the policy sees (mode "decide", or
    consulted); returns the same graph without `decisions` (a policy that is not static)."""
    if decisions is None:
        return graph
    seen = [c for c in graph.nodes(Cell) if c.mode == DECIDE or c.consult]
    if not seen:
        return graph
    chosen = decisions(graph)
    modes = {c.cell: c.mode if c.mode != DECIDE else COMPUTE if chosen[c.cell] else REUSE_MODE for c in seen}
    return set_cells(graph, modes, consult=False)


@register_pass
@attrs.frozen
class FoldStatic(Pass):
    """`fold_static` as a pipeline pass; `decisions` is bound by the runtime when it can evaluate
    the policy ahead of time (otherwise the pass leaves the graph as it is)."""

    name = "fold_static"
    decisions: Decisions | None = attrs.field(default=None, eq=False, metadata=bound(text=None))

    def run(self, graph: Graph) -> Graph:
        return fold_static(graph, self.decisions)


def skip_schedule(graph: Graph) -> dict[tuple[str, int], str]:
    """{(branch, unit): "CCS..."} of a graph's cells (C: computes, S: reuses, R: reuses another
    generation's, ?: decided at run time)."""
    from edit.graph.text import cell_state, schedule_rows

    return schedule_rows({c.cell: cell_state(c) for c in graph.nodes(Cell)})
