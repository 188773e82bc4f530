"""The schedule search's dynamic programme (`edit.passes.search`) is exact: on every small instance
it finds the optimum brute force finds, for the sum and the minimax objective."""

from __future__ import annotations

import random

import pytest

from edit.passes.search import brute_force, combine_costs, solve


def random_costs(n: int, rng: random.Random, *, ties: bool = False) -> dict:
    """Costs that grow with the reuse span, with noise (or drawn from a few values, for ties)."""
    costs = {}
    for i in range(n):
        for j in range(i + 1, n + 1):
            costs[(i, j)] = float(rng.choice([0, 1, 2, 3])) if ties else (j - i - 1) * rng.random() * (1 + i / n)
    return costs


@pytest.mark.parametrize("objective", ["sum", "max"])
@pytest.mark.parametrize("seed", range(12))
def test_the_programme_finds_the_brute_force_optimum(objective, seed):
    rng = random.Random(seed)
    n = rng.randint(1, 10)
    costs = random_costs(n, rng, ties=seed % 3 == 0)
    for budget in range(1, n + 1):
        dp, brute = solve(costs, n, budget, objective), brute_force(costs, n, budget, objective)
        assert dp.value == brute.value, (n, budget, dp, brute)
        assert dp.budget <= budget and dp.computed[0] == 0
        # the value is what its own edges give
        values = [c for _, _, c in dp.edge_costs]
        assert dp.value == pytest.approx(sum(values) if objective == "sum" else max(values))
        assert [e[:2] for e in dp.edge_costs] == list(zip(dp.computed, dp.computed[1:] + (n,)))


def test_a_small_instance_by_hand():
    # 4 steps: reusing across step 2 is cheap, across step 3 dear
    costs = {(i, j): 0.0 if j == i + 1 else 10.0 for i in range(4) for j in range(i + 1, 5)}
    costs[(1, 3)] = 1.0
    costs[(0, 2)] = 2.0
    best = solve(costs, 4, 3)
    assert best.computed == (0, 1, 3) and best.reused == (2,) and best.value == 1.0
    two = solve(costs, 4, 2)  # every path of 2 edges costs 10 at least; one edge, 0 -> 4, costs 10 too
    assert (two.computed, two.value) == ((0,), 10.0)  # a tie goes to fewer computes
    assert solve(costs, 4, 4).value == 0.0 and solve(costs, 4, 4).reused == ()
    assert solve(costs, 4, 3, "max").value == 1.0


def test_minimax_and_sum_can_disagree():
    # sum prefers one dear edge and free ones; max prefers two middling edges
    costs = {(i, j): 100.0 for i in range(4) for j in range(i + 1, 5)}
    costs.update({(0, 1): 0.0, (1, 4): 5.0, (0, 2): 3.0, (2, 4): 3.0})
    assert solve(costs, 4, 2, "sum").computed == (0, 1) and solve(costs, 4, 2, "sum").value == 5.0
    assert solve(costs, 4, 2, "max").computed == (0, 2) and solve(costs, 4, 2, "max").value == 3.0


def test_bad_input_is_refused_naming_the_argument():
    costs = random_costs(3, random.Random(0))
    with pytest.raises(ValueError, match="budget: expected an int from 1"):
        solve(costs, 3, 0)
    with pytest.raises(ValueError, match="objective: expected one of"):
        solve(costs, 3, 2, "mean")
    with pytest.raises(ValueError, match="costs: no cost for the edge 1 -> 3"):
        solve({k: v for k, v in costs.items() if k != (1, 3)}, 3, 2)
    with pytest.raises(ValueError, match="costs: edge 0 -> 1 has cost -1.0"):
        solve({**costs, (0, 1): -1.0}, 3, 2)


def test_costs_over_prompts_combine_by_mean_or_worst_case():
    a, b = {(0, 1): 1.0, (0, 2): 4.0, (1, 2): 0.0}, {(0, 1): 3.0, (0, 2): 2.0, (1, 2): 2.0}
    assert combine_costs([a, b]) == {(0, 1): 2.0, (0, 2): 3.0, (1, 2): 1.0}
    assert combine_costs([a, b], "max") == {(0, 1): 3.0, (0, 2): 4.0, (1, 2): 2.0}
    with pytest.raises(ValueError, match="the same edges"):
        combine_costs([a, {(0, 1): 1.0}])


def _unit_brute_force(costs_by_unit, n, budget, objective):
    """The least value over every per-unit schedule with at most `budget` computed cells in all."""
    import itertools

    def value(costs, computed):
        path = [*computed, n]
        edges = [costs[(i, j)] for i, j in zip(path, path[1:])]
        return sum(edges) if objective == "sum" else max(edges)

    schedules = [[(0, *rest) for b in range(n) for rest in itertools.combinations(range(1, n), b)]] * len(costs_by_unit)
    best = None
    for combo in itertools.product(*schedules):
        if sum(len(c) for c in combo) > budget:
            continue
        values = [value(c, s) for c, s in zip(costs_by_unit, combo)]
        total = sum(values) if objective == "sum" else max(values)
        best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize("objective", ["sum", "max"])
@pytest.mark.parametrize("seed", range(6))
def test_the_allocation_over_units_is_exact(objective, seed):
    from edit.passes.search import solve_every_budget, solve_units

    rng = random.Random(100 + seed)
    n, units = rng.randint(2, 5), rng.randint(1, 3)
    costs = [random_costs(n, rng, ties=seed % 2 == 0) for _ in range(units)]
    for c in costs:  # every budget of one unit from one table equals solving that budget alone
        assert [s.value for s in solve_every_budget(c, n, objective)] == \
            [solve(c, n, b, objective).value for b in range(1, n + 1)]
    for budget in range(units, units * n + 1):
        chosen = solve_units(costs, n, budget, objective)
        values = [s.value for s in chosen]
        got = sum(values) if objective == "sum" else max(values)
        assert sum(s.budget for s in chosen) <= budget
        assert got == pytest.approx(_unit_brute_force(costs, n, budget, objective), abs=1e-12)
