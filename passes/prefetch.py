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


def _check_positive(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{name}: expected None or a number > 0, got {value!r}")


def cost_lead(reads: int, *, residual_bytes: int | None, bandwidth: float | None, latency: float = 0.0,
              unit_seconds: float | None) -> int:
    """Cells of lead that hide `reads` transfers of one residual from the slowest tier: the transfer
    time (latency + bytes / bandwidth each, one after another) over one cell's compute time. 1 when
    a figure is unknown (no earlier run to time a cell by)."""
    if residual_bytes is None or bandwidth is None or unit_seconds is None:
        return 1
    seconds = reads * (latency + residual_bytes / bandwidth)
    return max(1, math.ceil(seconds / unit_seconds))


def schedule_prefetch(graph: Graph, lead: int | None = None, *, speculative: bool | None = None,
                      residual_bytes: int | None = None, bandwidth: float | None = None, latency: float = 0.0,
                      unit_seconds: float | None = None) -> Graph:
    """Insert a `Prefetch` for every key each reading cell reads, ahead of it (see the module docstring).

    `lead` fixes the lead in cells; otherwise the cost model sets it per read (`cost_lead`: one
    residual of `residual_bytes` over `bandwidth` bytes/s plus `latency` per read, against
    `unit_seconds` of compute per cell). Reads that certainly happen (static and cross-generation
    reuses) are always staged; reads of run-time decisions only when `speculative` (default: with
    an explicit lead, yes; with the cost model, no — a speculative read for a cell that then
    computes is wasted I/O). Returns the same graph when nothing is to be staged.
    """
    if lead is not None:
        _check_lead(lead)
    for name, value in (("residual_bytes", residual_bytes), ("bandwidth", bandwidth), ("unit_seconds", unit_seconds)):
        _check_positive(name, value)
    speculative = (lead is not None) if speculative is None else speculative
    clock = [(n.step, n.branch, n.unit) for n in graph.nodes((Unit, Cell))]
    index = {cell: i for i, cell in enumerate(clock)}
    staged = {(p.step, p.branch, p.unit) for p in graph.nodes(Prefetch)}
    placements = {}
    for cell in graph.nodes(Cell):
        if cell.mode == COMPUTE or (cell.mode == DECIDE and not speculative) or cell.cell in staged:
            continue
        here = index[cell.cell]
        keys = graph.read_keys(cell)
        ahead = lead if lead is not None else cost_lead(len(keys), residual_bytes=residual_bytes,
                                                        bandwidth=bandwidth, latency=latency,
                                                        unit_seconds=unit_seconds)
        writers = [graph.latest_writer(cell, key=key) for key in keys]
        earliest = max((index[w.cell] + 1 for w in writers if w is not None), default=0)  # else: any time
        placements[cell.cell] = clock[max(here - ahead, min(earliest, here))]
    return insert_prefetch(graph, placements) if placements else graph


@register_pass
@attrs.frozen
class SchedulePrefetch(Pass):
    """`schedule_prefetch(lead=k)` or, with the cost model, `schedule_prefetch(residual_bytes=...,
    bandwidth=..., latency=..., unit_seconds=...)` as a pipeline pass."""

    name = "schedule_prefetch"
    lead: int | None = None
    speculative: bool | None = None
    residual_bytes: int | None = None
    bandwidth: float | None = None
    latency: float = 0.0
    unit_seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.lead is not None:
            _check_lead(self.lead)

    def run(self, graph: Graph) -> Graph:
        return schedule_prefetch(graph, self.lead, speculative=self.speculative, residual_bytes=self.residual_bytes,
                                 bandwidth=self.bandwidth, latency=self.latency, unit_seconds=self.unit_seconds)
