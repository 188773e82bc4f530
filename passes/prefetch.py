"""`schedule_prefetch`: issue each residual read early, so a slow tier's transfer overlaps compute.

The cells of a plan — (step, branch, unit), in execution order — are the scheduler's clock. A `Load`
in cell i gets a `Prefetch` issued before cell i - lead, but never before the cell after the latest
`Save` of its key (earlier, it would stage the previous value). `prefetch_lead` turns a transfer
estimate into a lead: as many cells as the transfer takes to hide, and no more — a prefetch issued
while the entry still sits in the top tier stages nothing, and if the entry spills afterwards its
read waits for the slow tier after all.
"""

from __future__ import annotations

import math

from edit.graph import PREFETCH, Decide, Graph, Load, Prefetch, Reuse, Save, Unit


def prefetch_lead(residual_bytes: int, bandwidth_bytes_per_s: float, unit_seconds: float) -> int:
    """Cells of compute needed to hide one transfer: ceil(bytes / bandwidth / unit time), at least 1."""
    for name, value in (("residual_bytes", residual_bytes), ("bandwidth_bytes_per_s", bandwidth_bytes_per_s),
                        ("unit_seconds", unit_seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return max(1, math.ceil(residual_bytes / bandwidth_bytes_per_s / unit_seconds))


def _check_lead(lead: int) -> int:
    if isinstance(lead, bool) or not isinstance(lead, int) or lead < 1:
        raise ValueError(f"lead: expected an int >= 1 (cells ahead of the load), got {lead!r}")
    return lead


def schedule_prefetch(graph: Graph, lead: int = 1) -> Graph:
    """Insert one `Prefetch` per `Load`, `lead` cells ahead (see the module docstring).

    Returns the same graph when it has no loads, or when every load already has its prefetch.
    """
    lead = _check_lead(lead)
    order = graph.order()
    cells: list[tuple[int, str, int]] = []
    for node in order:
        if isinstance(node, (Decide, Unit, Reuse, Load, Save)):
            cell = (node.step, node.branch, node.unit)
            if not cells or cells[-1] != cell:
                cells.append(cell)
    index = {cell: i for i, cell in enumerate(cells)}
    saves: dict[tuple, list[int]] = {}
    for save in graph.nodes(Save):
        saves.setdefault(save.key, []).append(index[(save.step, save.branch, save.unit)])
    loads = [n for n in order if isinstance(n, Load)
             and not any(d["kind"] == PREFETCH for _, d in graph.in_edges(n, kind=None))]
    if not loads:
        return graph
    new = graph.copy()
    for load in loads:
        here = index[(load.step, load.branch, load.unit)]
        written = [i for i in saves.get(load.key, []) if i < here]
        earliest = max(written) + 1 if written else 0  # a key of an earlier generation: any time
        issue = cells[max(here - lead, earliest)]
        prefetch = new.add_node(Prefetch(load.step, load.branch, load.unit, load.generation, issue=issue))
        new.add_edge(prefetch, load, kind=PREFETCH)
    return new
