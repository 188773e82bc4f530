"""What each cell of a drawn plan is: its state (from the plan, or a run's trace), where a reuse
reads from, and its prefetch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edit.graph.effects import latest_key
from edit.graph.nodes import DECIDE, REUSE_MODE, Cell, Prefetch
from edit.graph.text import cell_states

if TYPE_CHECKING:
    from edit.graph.core import Graph

#: The states a run's trace may give a cell (M: reused, missed the store, recomputed).
TRACE_STATES = ("C", "S", "M")
_TraceKey = tuple[int, str, int]


def _trace(graph: Graph, trace: Any) -> dict[_TraceKey, str] | None:
    """A run's trace as {(step, branch, unit): "C" | "S" | "M"}, checked against the plan."""
    if trace is None:
        return None
    if hasattr(trace, "cell_states"):  # CacheStats
        trace = trace.cell_states()
    if not isinstance(trace, Mapping):
        raise TypeError(f"trace: expected CacheStats, its cell_states() or its trace dict, got {type(trace).__name__}")
    states: dict[_TraceKey, str] = {}
    for key, value in trace.items():
        if isinstance(key, tuple) and len(key) == 2 and isinstance(value, str):  # stats.trace: a row per unit
            states.update(((step, key[0], key[1]), ch) for step, ch in enumerate(value))
        elif isinstance(key, tuple) and len(key) == 3:
            states[key] = value
        else:
            raise TypeError(f"trace: expected keys (step, branch, unit) or (branch, unit), got {key!r}")
    cells = {n.cell for n in graph.nodes(Cell)}
    for key, state in sorted(states.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        if state not in TRACE_STATES:
            raise ValueError(f"trace: cell {key} has state {state!r}, expected one of {', '.join(TRACE_STATES)}")
        if key not in cells:
            raise ValueError(f"trace: cell {key} is not a cached cell of this plan (a trace of another plan?)")
    return states


class _Look:
    """What each (step, branch, unit) is drawn as: its state, where a reuse reads from, its prefetch."""

    def __init__(self, graph: Graph, trace: dict[_TraceKey, str] | None):
        self.traced = trace is not None
        self.states = cell_states(graph)
        self.runtime: set[_TraceKey] = set()
        self.source: dict[_TraceKey, str] = {}
        self.prefetch = {(p.step, p.branch, p.unit): p.issue for p in graph.nodes(Prefetch)}
        by_unit: dict[tuple, list[Cell]] = {}
        for cell in graph.nodes(Cell):
            by_unit.setdefault((cell.model, cell.generation, cell.branch, cell.unit), []).append(cell)
            if cell.mode == DECIDE:
                self.runtime.add(cell.cell)
            if cell.mode == REUSE_MODE and cell.window:
                self.states[cell.cell] = "R"
        self.states.update(trace or {})
        for cells in by_unit.values():
            written: int | None = None  # the step whose compute path last saved this unit's residual
            for cell in sorted(cells, key=lambda c: c.step):
                state = self.states[cell.cell]
                if state in ("S", "M", "R"):
                    if state == "R":
                        self.source[cell.cell] = f"gen {graph.effects(cell).reads[0][1]}"
                    elif cell.mode == REUSE_MODE and cell.source is not None:
                        self.source[cell.cell] = f"s{cell.source}"
                    elif written is not None:
                        self.source[cell.cell] = f"s{written}"
                # "?": it may compute, so it is the latest writer as `graph.latest_writer` sees it; a
                # miss recomputes into the key it read, which is the unit's latest unless it was pinned
                if state in ("C", "?") or (state == "M" and latest_key(cell) in graph.effects(cell).miss_writes):
                    written = cell.step

    def state(self, step: int, branch: str, unit: int) -> str:
        return self.states.get((step, branch, unit), "C")

    def caption(self, cell: _TraceKey) -> str:
        """The state line of a cell: "C", "S from s3", "M (s3 missed)", "?"."""
        state, source = self.states.get(cell, "C"), self.source.get(cell)
        if source is None:
            return state
        return f"M ({source} missed)" if state == "M" else f"{state} from {source}"
