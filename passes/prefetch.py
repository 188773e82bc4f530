"""`schedule_prefetch`: issue each residual read early, so a slow tier's transfer overlaps compute.

The cells of a plan — (step, branch, unit), in execution order — are the scheduler's clock. A cell
that reads a residual (a static reuse, or a run-time decision when `speculative`) gets a `Prefetch`
issued `lead` cells before it, but never before the cell after the latest write of the key it reads
(earlier, it would stage the previous value). `prefetch_lead` turns a transfer estimate into a lead:
as many cells as the transfer takes to hide, and no more — a prefetch issued while the entry still
sits in the top tier stages nothing, and if the entry spills afterwards its read waits for the slow
tier after all.
"""

from __future__ import annotations

import math

import attrs

from edit.graph import COMPUTE, DECIDE, Cell, Graph, Prefetch, Unit
from edit.passes.base import Pass, register_pass
from edit.passes.edit import insert_prefetch


def prefetch_lead(residual_bytes: int, bandwidth_bytes_per_s: float, unit_seconds: float) -> int:
    """Cells of compute needed to hide one transfer: ceil(bytes / bandwidth / unit time), at least 1."""
    for name, value in (("residual_bytes", residual_bytes), ("bandwidth_bytes_per_s", bandwidth_bytes_per_s),
                        ("unit_seconds", unit_seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return max(1, math.ceil(residual_bytes / bandwidth_bytes_per_s / unit_seconds))


def _check_lead(lead: int) -> int:
    if isinstance(lead, bool) or not isinstance(lead, int) or lead < 1:
        raise ValueError(f"lead: expected an int >= 1 (cells ahead of the read), got {lead!r}")
    return lead


def schedule_prefetch(graph: Graph, lead: int = 1, *, speculative: bool = True) -> Graph:
    """Insert one `Prefetch` per reading cell, `lead` cells ahead (see the module docstring).

    Returns the same graph when no cell reads, or every reading cell already has its prefetch.
    """
    lead = _check_lead(lead)
    clock = [(n.step, n.branch, n.unit) for n in graph.nodes((Unit, Cell))]
    index = {cell: i for i, cell in enumerate(clock)}
    staged = {(p.step, p.branch, p.unit) for p in graph.nodes(Prefetch)}
    placements = {}
    for cell in graph.nodes(Cell):
        if cell.mode == COMPUTE or (cell.mode == DECIDE and not speculative) or cell.cell in staged:
            continue
        here = index[cell.cell]
        writer = graph.latest_writer(cell, key=graph.read_key(cell))
        earliest = index[writer.cell] + 1 if writer is not None else 0  # another generation's key: any time
        placements[cell.cell] = clock[max(here - lead, earliest)]
    return insert_prefetch(graph, placements) if placements else graph


@register_pass
@attrs.frozen
class SchedulePrefetch(Pass):
    """`schedule_prefetch(lead=k)` as a pipeline pass."""

    name = "schedule_prefetch"
    lead: int = attrs.field(default=1, metadata={"always": True})
    speculative: bool = True

    def __attrs_post_init__(self) -> None:
        _check_lead(self.lead)

    def run(self, graph: Graph) -> Graph:
        return schedule_prefetch(graph, self.lead, speculative=self.speculative)
