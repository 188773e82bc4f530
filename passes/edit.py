"""The public editing API: what user passes and the built-in passes are written with.

Each function returns a new graph (the input is left as it was) that is valid, or raises
`GraphError` naming the node that the edit would break.

>>> from edit.graph import RunSpec, lower
>>> from edit.passes import set_cells
>>> g = lower(RunSpec(num_steps=4, timesteps=[900.0, 600.0, 300.0, 100.0], num_blocks=4, granularity=2))
>>> g = set_cells(g, "reuse", steps=[1, 3], units=[1])    # FORA-style: a static skip schedule
>>> print(g.summary())
step  cond    uncond
   0  CC      CC
   1  CS      CS
   2  CC      CC
   3  CS      CS
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import networkx as nx

from edit.graph import (CELL_MODES, COMPUTE, DECIDE, PREFETCH, REUSE_MODE, Cell, Graph, GraphError, Node, Prefetch,
                        Unit)


def _selection(values: Any, what: str) -> set | None:
    if values is None:
        return None
    if isinstance(values, (str, int)):
        return {values}
    try:
        return set(values)
    except TypeError:
        raise TypeError(f"{what}: expected None (all) or an iterable, got {type(values).__name__}") from None


def select_cells(graph: Graph, *, steps: Iterable[int] | None = None, branches: Iterable[str] | None = None,
                 units: Iterable[int] | None = None) -> list[Cell]:
    """The cells whose step, branch and unit are in the given sets (None: any), in execution order."""
    steps, branches, units = (_selection(steps, "steps"), _selection(branches, "branches"),
                              _selection(units, "units"))
    return [c for c in graph.nodes(Cell) if (steps is None or c.step in steps)
            and (branches is None or c.branch in branches) and (units is None or c.unit in units)]


def cells_from_units(graph: Graph) -> Graph:
    """Turn every plain `Unit` into a `Cell` that always computes (a graph with no policy applied)."""
    new = graph.copy()
    for unit in new.nodes(Unit):
        new.replace_node(unit, Cell(unit.step, unit.branch, unit.unit, unit.blocks, mode=COMPUTE,
                                    generation=new.spec.generation if new.spec else 0, model=unit.model))
    return new


def set_cells(graph: Graph, mode: str | Mapping[Any, str], *, steps: Iterable[int] | None = None,
              branches: Iterable[str] | None = None, units: Iterable[int] | None = None,
              cells: Iterable[Any] | None = None, consult: bool | None = None, missing: str = "error") -> Graph:
    """Set the mode of the selected cells: "compute", "reuse" or "decide" (None selects all).

    `cells` selects explicit (step, branch, unit) triples (or `Cell` records) instead; `mode` may
    also be a mapping {cell: mode} that sets each of its cells to its own mode. A graph with
    plain units gets cells first (every cell computing). "reuse" reads the residual of the unit's
    latest earlier writer (printed `source=sN` when that step always computes); "decide" hands the
    cell to the bound policy at run time, except on a unit's first step, which has nothing to reuse
    and computes (consulting the policy). `consult` (None: leave as is) says whether the policy
    still sees a cell whose path is fixed. Reuses later in the same units are re-pointed when the
    edit changed which step they read. A selection value that matches no cell (a step, branch or
    unit the graph does not have) is an error unless `missing="ignore"`.
    """
    if missing not in ("error", "ignore"):
        raise ValueError(f"missing: expected 'error' or 'ignore', got {missing!r}")
    if isinstance(mode, Mapping):
        if any(x is not None for x in (steps, branches, units, cells)):
            raise ValueError("mode: a {cell: mode} mapping selects its own cells; give no other selection")
        modes = {(k.cell if isinstance(k, Cell) else tuple(k)): v for k, v in mode.items()}
        cells = list(modes)
    else:
        modes = None
    for m in (modes.values() if modes is not None else (mode,)):
        if m not in CELL_MODES:
            raise ValueError(f"mode: expected one of {CELL_MODES}, got {m!r}")
    if consult is not None and not isinstance(consult, bool):
        raise TypeError(f"consult: expected None or a bool, got {type(consult).__name__}")
    new = graph.copy() if any(isinstance(n, Cell) for n in graph.nodes(Cell)) else cells_from_units(graph)
    chosen = _chosen(new, cells, steps, branches, units)
    if missing == "error" and cells is None:
        _check_selection(new, steps=steps, branches=branches, units=units)
    groups = set()
    wanted = {c.cell: modes[c.cell] if modes is not None else mode for c in chosen}
    for cell in sorted(chosen, key=lambda c: c.step):
        cell = new.cell_at(cell.step, cell.branch, cell.unit, cell.model)  # the record as edited so far
        earlier = new.previous_cell(cell)
        mode = wanted[cell.cell]
        target, keep_consult = mode, cell.consult if consult is None else consult
        if mode == DECIDE and earlier is None:
            target, keep_consult = COMPUTE, True
        elif mode == REUSE_MODE and earlier is None:
            raise GraphError(f"%{cell.name}: cannot reuse: it is the first step of ({cell.branch}, u{cell.unit}), "
                             "no earlier step stores a residual")
        if mode == DECIDE:
            keep_consult = False if target == DECIDE else keep_consult
        source = None
        if target == REUSE_MODE and cell.window:
            continue  # already a reuse (across generations)
        if target == REUSE_MODE:  # earlier steps are final already (cells go in step order)
            writer = new.latest_writer(cell)
            if writer is None:
                raise GraphError(f"%{cell.name}: cannot reuse: no earlier step of ({cell.branch}, u{cell.unit}) "
                                 "stores a residual")
            source = writer.step if writer.mode == COMPUTE else None
        _swap(new, cell, attrs.evolve(cell, mode=target, consult=keep_consult, source=source, window=()), groups)
    _settle(new, groups)
    return new


def _chosen(graph: Graph, cells: Iterable[Any] | None, steps: Any, branches: Any, units: Any) -> list[Cell]:
    """The cells `set_cells` edits: explicit (step, branch, unit) triples, or a selection."""
    if cells is None:
        return select_cells(graph, steps=steps, branches=branches, units=units)
    if any(x is not None for x in (steps, branches, units)):
        raise ValueError("cells: give either cells= or steps=/branches=/units=, not both")
    chosen = []
    for item in cells:
        triple = item.cell if isinstance(item, Cell) else tuple(item)
        cell = graph.cell_at(*triple)
        if cell is None:
            raise ValueError(f"cells: no cell s{triple[0]}.{triple[1]}.u{triple[2]} in the graph")
        chosen.append(cell)
    return chosen


def _check_selection(graph: Graph, **selection: Any) -> None:
    """Every value asked for must name cells the graph has (a unit 1 at stack granularity does not)."""
    cells = graph.nodes(Cell)
    for what, values in selection.items():
        wanted = _selection(values, what)
        if wanted is None:
            continue
        field = what[:-2] if what == "branches" else what[:-1]
        have = {getattr(c, field) for c in cells}
        absent = sorted(wanted - have, key=str)
        if absent:
            raise ValueError(f"{what}: {absent} match no cell of this graph ({what} it has: "
                             f"{sorted(have, key=str)}); pass missing='ignore' to skip them")


def _swap(graph: Graph, cell: Cell, edited: Cell, groups: set) -> None:
    if edited != cell:
        graph.replace_node(cell, edited)
    groups.add((cell.model, cell.generation, cell.branch, cell.unit))


def _settle(graph: Graph, groups: set) -> None:
    """After cells of `groups` changed: re-point their reuses, drop prefetches that no longer fit."""
    for group in groups:
        _repoint_reuses(graph, group)
    _check_prefetches(graph, groups)


def _repoint_reuses(graph: Graph, group: tuple) -> None:
    """Give every reuse of a unit a valid source: kept when still valid, else its latest writer."""
    for cell in graph.cells(group):
        if cell.mode != REUSE_MODE or cell.window:
            continue
        if cell.source is not None and cell.check(graph) is None:
            continue
        if cell.source is None and graph.latest_writer(cell) is not None \
                and graph.latest_writer(cell).mode != COMPUTE:
            continue  # reads whatever the run-time writer before it stored: still right
        writer = graph.latest_writer(cell)
        if writer is None:
            raise GraphError(f"%{cell.name}: reuses, but no earlier step of ({cell.branch}, u{cell.unit}) stores "
                             "a residual any more")
        source = writer.step if writer.mode == COMPUTE else None
        if source != cell.source:
            graph.replace_node(cell, attrs.evolve(cell, source=source))


def _check_prefetches(graph: Graph, groups: set) -> None:
    """A prefetch whose cell no longer reads, or reads another key, goes; the scheduler may place it again."""
    for prefetch in graph.nodes(Prefetch):
        reader = graph.cell_at(prefetch.step, prefetch.branch, prefetch.unit)
        if reader is not None and (reader.model, reader.generation, reader.branch, reader.unit) in groups:
            if prefetch.check(graph) is not None:
                graph.remove_node(prefetch)


def set_window(graph: Graph, window: Iterable[int], *, steps: Iterable[int] | None = None,
               branches: Iterable[str] | None = None, units: Iterable[int] | None = None) -> Graph:
    """Cross-generation reuse: the selected cells reuse the mean of the residuals that the
    generations in `window` kept for the same step (the cell computes when the store has none of
    them), and keep what they apply under their own step key for later generations (`pin`). With
    an empty window the cells only keep their residual (as the first segment does)."""
    window = tuple(sorted({int(g) for g in window}))
    new = graph.copy() if graph.nodes(Cell) else cells_from_units(graph)
    own = new.spec.generation if new.spec is not None else 0
    newer = [g for g in window if g >= own]
    if newer:
        raise ValueError(f"window: {list(window)} holds generation(s) {newer}, not older than the graph's own "
                         f"generation {own} (a segment reuses earlier segments only)")
    groups = set()
    for cell in select_cells(new, steps=steps, branches=branches, units=units):
        _swap(new, cell, attrs.evolve(cell, mode=REUSE_MODE, window=window, source=None, pin=True) if window
              else attrs.evolve(cell, pin=True), groups)
    _settle(new, groups)
    return new


def reroute_reuse(graph: Graph, cell: Cell | tuple, source: int) -> Graph:
    """Make `cell` reuse the residual that step `source` of the same unit computed.

    The source cell must always compute; when a newer step would overwrite its residual before the
    read, the source cell is pinned (it also keeps its residual under a step key).
    """
    new = graph.copy()
    target = _cell(new, cell)
    src = new.cell_at(source, target.branch, target.unit, target.model) if isinstance(source, int) else None
    if src is None or src.step >= target.step:
        raise GraphError(f"%{target.name}: source=s{source}: no earlier cell of ({target.branch}, u{target.unit}) "
                         "at that step")
    if src.mode != COMPUTE:
        raise GraphError(f"%{target.name}: source=s{source}: %{src.name} is in mode {src.mode}; only a cell that "
                         "always computes is a static source (set_cells(g, 'compute', ...) first)")
    if target.mode == REUSE_MODE and target.source == source:
        return graph  # it reads that source already
    target = new.replace_node(target, attrs.evolve(target, mode=REUSE_MODE, source=source, consult=target.consult,
                                                   window=()))
    if new.latest_writer(target) is not src and not src.pin:
        new.replace_node(src, attrs.evolve(src, pin=True))
    group = (target.model, target.generation, target.branch, target.unit)
    _settle(new, {group})  # a later reuse that read this cell's residual now reads the latest writer before it
    for cell in new.cells(group):
        problem = cell.check(new)
        if problem:
            raise GraphError(f"%{cell.name}: {problem}")
    return new


def insert_prefetch(graph: Graph, cell: Cell | tuple | Mapping, issue: tuple | None = None) -> Graph:
    """Add a `Prefetch` for the read of `cell`, issued before cell `issue` = (step, branch, unit).

    A mapping {cell: issue, ...} inserts several at once. A cell that already has a prefetch gets
    the new one instead.
    """
    placements = dict(cell) if isinstance(cell, Mapping) else {cell: issue}
    new = graph.copy()
    for target, at in placements.items():
        reader = _cell(new, target)
        if at is None or len(tuple(at)) != 3:
            raise ValueError(f"issue: expected a (step, branch, unit) cell to issue %{reader.name}'s prefetch at, "
                             f"got {at!r}")
        for key in new.read_keys(reader):  # one prefetch per key read (a window reads several)
            prefetch = Prefetch(reader.step, reader.branch, reader.unit, key, tuple(at))
            old = new.get(prefetch.name)
            if old is not None:
                new.remove_node(old)
            new.add_node(prefetch)
            new.add_edge(prefetch, reader, kind=PREFETCH)
            problem = prefetch.check(new)
            if problem:
                raise GraphError(f"%{prefetch.name}: {problem}")
    return new


def remove_prefetch(graph: Graph, prefetch: Prefetch | Cell | tuple) -> Graph:
    """Drop a prefetch (given itself), or every prefetch of the cell whose read they stage."""
    new = graph.copy()
    if isinstance(prefetch, Prefetch):
        found = [prefetch]
    else:
        reader = _cell(new, prefetch)
        found = new.find(Prefetch, step=reader.step, branch=reader.branch, unit=reader.unit)
        if not found:
            raise ValueError(f"prefetch: %{reader.name} has no prefetch")
    for node in found:
        new.remove_node(node)
    return new


def replace_all_uses_with(graph: Graph, old: Node, new_node: Node) -> Graph:
    """A new graph where every consumer of `old` reads `new_node` instead (`new_node` is added if
    absent). Both must belong to the same step and branch (a rewire across them would change the
    run while its summary stays the same), and the rewire may not make a cycle."""
    if old not in graph:
        raise ValueError(f"old: %{getattr(old, 'name', old)} is not a node of the graph")
    if new_node == old:
        raise ValueError(f"new_node: is %{old.name} itself; nothing would change")
    for field in ("step", "branch"):
        a, b = getattr(old, field, None), getattr(new_node, field, None)
        if a is not None and b is not None and a != b:
            raise ValueError(f"new_node: %{new_node.name} is at {field} {b!r}, %{old.name} at {a!r}; a rewire stays "
                             "within one step and branch")
    new = graph.copy()
    new.add_node(new_node)
    for consumer in new.consumers(old, kind=None):
        if consumer == new_node or nx.has_path(new.nx, consumer, new_node):
            raise ValueError(f"new_node: %{new_node.name} depends on %{consumer.name}, a consumer of %{old.name}: "
                             "the rewire would make a cycle")
    new.replace_all_uses_with(old, new_node)
    return new


def _cell(graph: Graph, cell: Cell | tuple) -> Cell:
    triple = cell.cell if isinstance(cell, Cell) else tuple(cell)
    found = graph.cell_at(*triple) if len(triple) == 3 else None
    if found is None:
        raise ValueError(f"cell: no cell {triple!r} (step, branch, unit) in the graph")
    return found
