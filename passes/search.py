"""Schedule search as a shortest path over the steps (LeMiCa's view, solved exactly). Torch-free.

Nodes are the denoising steps 0..n-1 and a terminal n. An edge i -> j (i < j) means: compute at
step i, reuse its residual at steps i+1..j-1, compute again at j (or end, j = n). Its cost is the
error that reuse causes, measured once on calibration runs (`edit.search`). A schedule with B
computed steps is a path 0 -> ... -> n of B edges; step 0 always computes (nothing to reuse yet).

`solve` finds the path of at most `budget` edges minimising the sum of its edge costs, or their
maximum (minimax), by dynamic programming over (edges used, node) in O(n^2 * budget): exact for
both objectives. `brute_force` enumerates every schedule, for tests on small n.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import attrs

OBJECTIVES = ("sum", "max")


@attrs.frozen
class Schedule:
    """A searched schedule: the `computed` steps (ascending, step 0 first), its `edges` (i, j) with
    their predicted costs, and the objective's value."""

    num_steps: int
    computed: tuple[int, ...]
    edge_costs: tuple[tuple[int, int, float], ...]
    objective: str
    value: float

    @property
    def reused(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.num_steps) if s not in set(self.computed))

    @property
    def budget(self) -> int:
        return len(self.computed)


def check_costs(costs: Mapping[tuple[int, int], float], num_steps: int) -> None:
    """Every edge i -> j (0 <= i < j <= num_steps) needs a finite cost >= 0."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
    for i in range(num_steps):
        for j in range(i + 1, num_steps + 1):
            c = costs.get((i, j))
            if c is None:
                raise ValueError(f"costs: no cost for the edge {i} -> {j} (compute at {i}, reuse until {j})")
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
                raise ValueError(f"costs: edge {i} -> {j} has cost {c!r}; expected a finite number >= 0")


def _check(budget: int, objective: str, num_steps: int) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= num_steps:
        raise ValueError(f"budget: expected an int from 1 (step 0 alone computes) to {num_steps} (every step), "
                         f"got {budget!r}")


def _combine(objective: str, acc: float, cost: float) -> float:
    return acc + cost if objective == "sum" else max(acc, cost)


def _schedule(num_steps: int, path: Sequence[int], costs: Mapping, objective: str, value: float) -> Schedule:
    edges = tuple((i, j, float(costs[(i, j)])) for i, j in zip(path, path[1:]))
    return Schedule(num_steps, tuple(path[:-1]), edges, objective, float(value))


def _programme(costs: Mapping, n: int, budget: int, objective: str) -> tuple[list, list]:
    """best[e][j]: the least value of a path 0 -> j of e edges (e <= budget); back[e][j]: its previous node."""
    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(budget + 1)]
    back = [[-1] * (n + 1) for _ in range(budget + 1)]
    best[0][0] = 0.0
    for e in range(1, budget + 1):
        row, prev = best[e], best[e - 1]
        for j in range(1, n + 1):
            for i in range(j):
                if prev[i] == inf:
                    continue
                value = _combine(objective, prev[i], costs[(i, j)])
                if value < row[j]:
                    row[j], back[e][j] = value, i
    return best, back


def _path(back: list, edges: int, n: int) -> list[int]:
    path = [n]
    for e in range(edges, 0, -1):
        path.append(back[e][path[-1]])
    return path[::-1]


def solve(costs: Mapping[tuple[int, int], float], num_steps: int, budget: int, objective: str = "sum") -> Schedule:
    """The schedule of at most `budget` computed steps whose edge costs have the least sum (or
    maximum). Ties go to fewer computes, then to the earlier path in lexicographic order."""
    check_costs(costs, num_steps)
    _check(budget, objective, num_steps)
    best, back = _programme(costs, num_steps, budget, objective)
    edges = min(range(1, budget + 1), key=lambda e: (best[e][num_steps], e))
    return _schedule(num_steps, _path(back, edges, num_steps), costs, objective, best[edges][num_steps])


def solve_every_budget(costs: Mapping[tuple[int, int], float], num_steps: int,
                       objective: str = "sum") -> tuple[Schedule, ...]:
    """`solve` for every budget 1..num_steps from one table (element b-1: at most b computes)."""
    check_costs(costs, num_steps)
    _check(num_steps, objective, num_steps)
    best, back = _programme(costs, num_steps, num_steps, objective)
    out, chosen = [], None
    for b in range(1, num_steps + 1):
        if chosen is None or best[b][num_steps] < best[chosen][num_steps]:
            chosen = b
        out.append(_schedule(num_steps, _path(back, chosen, num_steps), costs, objective, best[chosen][num_steps]))
    return tuple(out)


def solve_units(costs_by_unit: Sequence[Mapping[tuple[int, int], float]], num_steps: int, budget: int,
                objective: str = "sum") -> tuple[Schedule, ...]:
    """One schedule per unit (a unit's cells reuse on their own: `costs_by_unit[u]` are unit u's edge
    costs with the other units computed) with at most `budget` computed cells in all, minimising the
    sum (or the maximum) of the units' values: each unit's best for every count of its own, then an
    exact allocation of the budget over the units (a knapsack over (unit, cells used))."""
    units = len(costs_by_unit)
    if units < 1:
        raise ValueError("costs_by_unit: expected the edge costs of at least one unit")
    if isinstance(budget, bool) or not isinstance(budget, int) or not units <= budget <= units * num_steps:
        raise ValueError(f"budget: expected an int from {units} (step 0 of every unit) to {units * num_steps} "
                         f"computed cells, got {budget!r}")
    options = [solve_every_budget(c, num_steps, objective) for c in costs_by_unit]
    inf = math.inf
    # table[u][c]: the least value of units 0..u-1 with c cells in all; pick[u][c]: unit u-1's count
    table = [[inf] * (budget + 1) for _ in range(units + 1)]
    pick = [[0] * (budget + 1) for _ in range(units + 1)]
    table[0][0] = 0.0
    for u in range(1, units + 1):
        for c in range(budget + 1):
            for b in range(1, min(num_steps, c) + 1):
                before = table[u - 1][c - b]
                if before == inf:
                    continue
                value = _combine(objective, before, options[u - 1][b - 1].value)
                if value < table[u][c]:
                    table[u][c], pick[u][c] = value, b
    cells = min(range(budget + 1), key=lambda c: (table[units][c], c))
    chosen = []
    for u in range(units, 0, -1):
        b = pick[u][cells]
        chosen.append(options[u - 1][b - 1])
        cells -= b
    return tuple(chosen[::-1])


def brute_force(costs: Mapping[tuple[int, int], float], num_steps: int, budget: int,
                objective: str = "sum") -> Schedule:
    """`solve` by enumerating every schedule of at most `budget` computes (small `num_steps` only)."""
    check_costs(costs, num_steps)
    _check(budget, objective, num_steps)
    found = None
    for b in range(1, budget + 1):
        for rest in itertools.combinations(range(1, num_steps), b - 1):
            path = [0, *rest, num_steps]
            value = 0.0
            for i, j in zip(path, path[1:]):
                value = _combine(objective, value, costs[(i, j)])
            if found is None or value < found[0]:
                found = (value, path)
    return _schedule(num_steps, found[1], costs, objective, found[0])


def combine_costs(per_prompt: Sequence[Mapping[tuple[int, int], float]], how: str = "mean") -> dict:
    """One cost per edge over several calibration prompts: their `mean` or worst case (`max`)."""
    if how not in ("mean", "max"):
        raise ValueError(f"how: expected 'mean' or 'max', got {how!r}")
    if not per_prompt:
        raise ValueError("per_prompt: expected the edge costs of at least one prompt")
    keys = set(per_prompt[0])
    for costs in per_prompt[1:]:
        if set(costs) != keys:
            raise ValueError("per_prompt: every prompt's costs must cover the same edges")
    if how == "mean":
        return {k: sum(c[k] for c in per_prompt) / len(per_prompt) for k in sorted(keys)}
    return {k: max(c[k] for c in per_prompt) for k in sorted(keys)}


def _edge_text(edges) -> str:
    return repr([[int(i), int(j), float(c)] for i, j, c in edges])


def _edges(value) -> tuple[tuple[int, int, float], ...]:
    return tuple((int(i), int(j), float(c)) for i, j, c in value)


from edit.passes.base import Pass, register_pass  # noqa: E402  (below the torch-free solver it serves)


@register_pass
@attrs.frozen
class Searched(Pass):
    """A searched schedule as a pass: every cell of a step that is not in `computed` reuses (the
    residual of the latest computed step), the rest compute. `edges` records each reuse edge
    (i, j) with its predicted error, and `objective` what was minimised, so the plan says where it
    came from: `searched(computed=[0, 1, 3], edges=[[0, 1, 0.0], [1, 3, 0.0012], [3, 4, 0.0]],
    objective='sum')`."""

    name = "searched"
    computed: tuple[int, ...] = attrs.field(converter=lambda v: tuple(int(s) for s in v),
                                            metadata={"text": lambda v: repr(list(v)), "always": True})
    edges: tuple[tuple[int, int, float], ...] = attrs.field(default=(), converter=_edges,
                                                            metadata={"text": _edge_text})
    objective: str = "sum"

    def __attrs_post_init__(self) -> None:
        if not self.computed or self.computed[0] != 0 or list(self.computed) != sorted(set(self.computed)):
            raise ValueError(f"computed: expected ascending steps starting at 0 (step 0 always computes), "
                             f"got {list(self.computed)!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")

    @classmethod
    def of(cls, schedule: Schedule) -> Searched:
        return cls(schedule.computed, schedule.edge_costs, schedule.objective)

    def run(self, graph):
        from edit.passes.edit import set_cells

        steps = graph.spec.num_steps
        if self.computed[-1] >= steps:
            raise ValueError(f"computed: step {self.computed[-1]} is past this plan's {steps} steps")
        reused = [s for s in range(steps) if s not in set(self.computed)]
        graph = set_cells(graph, "compute", steps=list(self.computed), missing="ignore")
        return set_cells(graph, "reuse", steps=reused, missing="ignore") if reused else graph


def _unit_schedules(value) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(step) for step in steps) for steps in value)


@register_pass
@attrs.frozen
class SearchedUnits(Pass):
    """Searched schedules per unit as a pass: unit u computes at `computed[u]` and reuses at its
    other steps (every branch alike); `edges` records (unit, i, j, predicted error) for each edge.
    `searched_units(computed=[[0, 2, 3], [0, 1, 3]], edges=[[0, 0, 2, 1e-05], ...], objective='sum')`."""

    name = "searched_units"
    computed: tuple[tuple[int, ...], ...] = attrs.field(converter=_unit_schedules,
                                                        metadata={"text": lambda v: repr([list(s) for s in v]),
                                                                  "always": True})
    edges: tuple[tuple[int, int, int, float], ...] = attrs.field(
        default=(), converter=lambda v: tuple((int(u), int(i), int(j), float(c)) for u, i, j, c in v),
        metadata={"text": lambda v: repr([[u, i, j, c] for u, i, j, c in v])})
    objective: str = "sum"

    def __attrs_post_init__(self) -> None:
        for u, steps in enumerate(self.computed):
            if not steps or steps[0] != 0 or list(steps) != sorted(set(steps)):
                raise ValueError(f"computed: unit {u}: expected ascending steps starting at 0, got {list(steps)!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")

    @classmethod
    def of(cls, schedules: Sequence[Schedule]) -> SearchedUnits:
        return cls([s.computed for s in schedules],
                   [(u, i, j, c) for u, s in enumerate(schedules) for i, j, c in s.edge_costs],
                   schedules[0].objective)

    def run(self, graph):
        from edit.passes.edit import set_cells

        steps = graph.spec.num_steps
        units = graph.units_per_forward()
        if len(self.computed) != units:
            raise ValueError(f"computed: {len(self.computed)} unit schedules for a plan of {units} units a forward")
        for u, computed in enumerate(self.computed):
            if computed[-1] >= steps:
                raise ValueError(f"computed: unit {u}: step {computed[-1]} is past this plan's {steps} steps")
            reused = [s for s in range(steps) if s not in set(computed)]
            graph = set_cells(graph, "compute", steps=list(computed), units=[u], missing="ignore")
            if reused:
                graph = set_cells(graph, "reuse", steps=reused, units=[u], missing="ignore")
        return graph
