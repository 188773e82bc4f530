"""`apply_policy`: a cache policy becomes a rewrite of every unit into decide / reuse / save paths."""

from __future__ import annotations

from typing import Any

from edit.graph import (COMPUTE, REUSE, SKIP, Decide, Graph, Load, Merge, Probe, Reuse, Save, Unit,
                        unit_ranges)
from edit.passes._edit import redirect_outputs, units_by_forward
from edit.passes.regroup import chain_units


def insert_probe(graph: Graph, units: list[Unit]) -> tuple[Probe, list[Unit]]:
    """Split block 0 off as the First-Block-Cache probe; units then cover blocks 1..N-1."""
    spec = graph.spec
    if spec.num_blocks < 2:
        raise ValueError("policy: a first-block probe needs a model with at least 2 blocks")
    return chain_units(graph, units, unit_ranges(spec.granularity, spec.num_blocks, first=1), probe=Probe)


def wrap_unit(graph: Graph, unit: Unit, policy_name: str, probe: Probe | None, previous_save: Save | None) -> Save:
    """decide -> (compute: unit, save) | (skip: load, reuse) -> merge, in place of `unit`."""
    step, branch, index, gen = unit.step, unit.branch, unit.unit, graph.spec.generation
    inputs = graph.inputs_of(unit)
    (src, select), (ctx, _) = inputs["hidden"], inputs["ctx"]
    merge = graph.add_node(Merge(step, branch, index))
    redirect_outputs(graph, unit, merge)
    graph.add_edge(unit, merge, port="computed")
    forced = previous_save is None  # nothing stored yet: the first step always computes
    decide = graph.add_node(Decide(step, branch, index, policy_name, forced=forced))
    graph.add_edge(src, decide, port="hidden", select=select)
    graph.add_edge(ctx, decide, port="ctx")
    if probe is not None:
        graph.add_edge(probe, decide, port="probe", select="residual")
    graph.add_edge(decide, unit, kind=COMPUTE)
    save = graph.add_node(Save(step, branch, index, gen))
    graph.add_edge(src, save, port="input", select=select)
    graph.add_edge(unit, save, port="output")
    graph.add_edge(decide, save, kind=COMPUTE)
    if not forced:
        load = graph.add_node(Load(step, branch, index, gen))
        graph.add_edge(previous_save, load, kind=REUSE)
        graph.add_edge(decide, load, kind=SKIP)
        reuse = graph.add_node(Reuse(step, branch, index, unit.blocks, gen))
        graph.add_edge(src, reuse, port="hidden", select=select)
        graph.add_edge(load, reuse, port="residual")
        graph.add_edge(ctx, reuse, port="ctx")
        graph.add_edge(decide, reuse, kind=SKIP)
        graph.add_edge(reuse, merge, port="reused")
    return save


def apply_policy(graph: Graph, policy: Any) -> Graph:
    """Insert a `Decide` bound to `policy` (by name) plus its reuse path and residual `Save` around
    every unit; with `policy.needs_first_block_probe`, block 0 becomes a `Probe` feeding every decision."""
    if any(isinstance(n, Decide) for n in graph.nx.nodes):
        raise ValueError("graph: a policy is already applied (it has Decide nodes)")
    name = getattr(policy, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"policy: expected a CachePolicy (with a name), got {type(policy).__name__}")
    new = graph.copy()
    saves: dict[tuple[str, int], Save] = {}
    for (step, branch), units in units_by_forward(new).items():
        probe = None
        if getattr(policy, "needs_first_block_probe", False):
            probe, units = insert_probe(new, units)
        for unit in units:
            saves[(branch, unit.unit)] = wrap_unit(new, unit, name, probe, saves.get((branch, unit.unit)))
    return new
