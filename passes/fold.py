"""`fold_static`: evaluate a static-signal policy at compile time into a fixed skip schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from edit.graph import REUSE, SKIP, Decide, Graph, Load, Reuse, Save, Unit
from edit.passes._edit import replace_node, units_by_forward
from edit.passes.policy import CacheContext, PolicyState

#: step -> (e, e0): the policy's signals at that step, as the run will compute them.
Signals = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def static_decisions(graph: Graph, policy: Any, signals: Signals) -> dict[tuple[int, str, int], bool]:
    """Run the policy over the steps in order, per (branch, unit), on the compile-time signals."""
    spec = graph.spec
    decisions = {}
    groups = units_by_forward(graph, Decide)
    num_units = max((len(v) for v in groups.values()), default=0)
    states: dict[tuple[str, int], PolicyState] = {}
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for (step, branch), decides in groups.items():
        if step not in cache:
            cache[step] = signals(step)
        e, e0 = cache[step]
        for d in decides:
            state = states.get((branch, d.unit))
            if state is None:
                state = states[(branch, d.unit)] = PolicyState(branch, d.unit)
                policy.reset(state)
            ctx = CacheContext(step=step, num_steps=spec.num_steps, branch=branch, unit_index=d.unit,
                               num_units=num_units, hidden=None, e0=e0, e=e, encoder_hidden=None, state=state)
            decisions[(step, branch, d.unit)] = bool(policy.should_compute(ctx)) or d.forced
    return decisions


def fold_static(graph: Graph, policy: Any, signals: Signals) -> Graph:
    """Replace every `Decide` by the path `policy` chooses on `signals`; drop the dead path.

    Only for policies with `static_signal` (TeaCache on Wan: `e`/`e0` depend on the timestep and
    the weights alone); returns the same graph otherwise. Decisions equal the run-time ones.
    """
    if not getattr(policy, "static_signal", False):
        return graph
    decides = [n for n in graph.nx.nodes if isinstance(n, Decide)]
    if not decides:
        return graph
    wrong = {d.policy for d in decides} - {policy.name}
    if wrong:
        raise ValueError(f"policy: the graph's decisions belong to {sorted(wrong)}, not {policy.name!r}")
    decisions = static_decisions(graph, policy, signals)
    new = graph.copy()
    last_save: dict[tuple[str, int], Save] = {}
    for decide in sorted(decides, key=lambda d: (d.step, d.branch, d.unit)):
        key = (decide.branch, decide.unit)
        guarded = {v: d["kind"] for _, v, d in new.nx.out_edges(decide, data=True) if d["kind"] != "data"}
        compute = decisions[(decide.step, decide.branch, decide.unit)]
        dead = [v for v, kind in guarded.items() if (kind == SKIP) == compute]
        for node in dead:
            new.remove_node(node)
        new.remove_node(decide)
        if compute:
            last_save[key] = next(v for v in guarded if isinstance(v, Save))
            continue
        load = next(v for v in guarded if isinstance(v, Load))
        reuse = next(v for v in guarded if isinstance(v, Reuse))
        for src in [u for u, _, d in new.nx.in_edges(load, data=True) if d["kind"] == REUSE]:
            new.nx.remove_edge(src, load)
        new.add_edge(last_save[key], load, kind=REUSE)
        replace_node(new, reuse, attrs.evolve(reuse, source=last_save[key].step))
    return new


def skip_schedule(graph: Graph) -> dict[tuple[str, int], str]:
    """{(branch, unit): "CCS..."} of a folded graph (C: the unit computes, S: it is reused)."""
    rows: dict[tuple[str, int], list[str]] = {}
    for (step, branch), units in units_by_forward(graph, (Unit, Reuse)).items():
        for node in units:
            rows.setdefault((branch, node.unit), []).append("C" if isinstance(node, Unit) else "S")
    return {k: "".join(v) for k, v in rows.items()}
