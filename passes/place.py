"""`place`: lay a plan out over ranks (CFG-parallel and sequence-parallel runs).

CFG-parallel is a rewrite of the graph: every `Guide` gets an `Exchange` in front of it, whose
`placement` says which CFG group of ranks computes each branch; a rank's program then runs only
its own branch's nodes (`edit.runtime.compile_program(graph, group=...)`). Sequence parallelism
changes no node: every rank of a CFG group runs the same cells on its own shard of the tokens,
so the plan is the same on every rank by construction, and `sequence` is recorded in the
pass's text (the plan's pipeline) for the runtime and for replays.
"""

from __future__ import annotations

import attrs

from edit.graph import Exchange, Graph, Guide
from edit.passes.base import Pass, register_pass


def _degree(inst: Place, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: expected an int >= 1, got {value!r}")
    if attribute.name == "cfg" and value > 2:
        raise ValueError(f"cfg: expected 1 or 2 (one CFG group per branch), got {value!r}")


def place(graph: Graph, cfg: int = 1) -> Graph:
    """With `cfg=2`: an `Exchange` before every `Guide`, cond on CFG group 0 and uncond on group 1
    (a new graph); `cfg=1`: the same graph."""
    if cfg == 1 or not graph.nodes(Guide):
        if cfg == 2:
            raise ValueError("place: cfg=2 needs two CFG branches (guidance_scale > 1); this plan has "
                             f"{', '.join(graph.spec.branches) if graph.spec else 'no guidance step'} only")
        return graph
    if graph.nodes(Exchange):
        raise ValueError("place: this plan is placed already (it has Exchange nodes)")
    new = graph.copy()
    placement = (("cond", 0), ("uncond", 1))
    for guide in new.nodes(Guide):
        exchange = new.add_node(Exchange(step=guide.step, placement=placement))
        for port, (src, select) in new.inputs_of(guide).items():
            new.remove_edge(src, guide, port=port)
            new.add_edge(src, exchange, port=port, select=select)
            new.add_edge(exchange, guide, port=port, select=port)
    return new


@register_pass
@attrs.frozen
class Place(Pass):
    """`place(cfg=2, sequence=2)` as a pipeline pass: the plan's layout over `cfg * sequence` ranks."""

    name = "place"
    cfg: int = attrs.field(default=1, validator=_degree)
    sequence: int = attrs.field(default=1, validator=_degree)

    def run(self, graph: Graph) -> Graph:
        return place(graph, self.cfg)
