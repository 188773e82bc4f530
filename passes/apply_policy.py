"""`apply_policy`: a cache policy becomes a rewrite of every unit into a `Cell` it decides."""

from __future__ import annotations

from typing import Any

import attrs

from edit.graph import COMPUTE, DECIDE, Cell, Graph, Probe, unit_ranges
from edit.passes.base import Pass, bound, register_pass
from edit.passes.policy import CachePolicy, policy_class
from edit.passes.regroup import chain_units, forwards


def needs_probe(policy: Any) -> bool:
    if isinstance(policy, str):
        policy = policy_class(policy)
    return bool(getattr(policy, "needs_first_block_probe", False))


def policy_name(policy: Any) -> str:
    name = policy if isinstance(policy, str) else getattr(policy, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"policy: expected a CachePolicy or a registered policy name, got {type(policy).__name__}")
    return name


def apply_policy(graph: Graph, policy: Any) -> Graph:
    """Every unit becomes a `Cell` in mode "decide" (its first step: "compute", consulting the
    policy); with `policy.needs_first_block_probe`, block 0 becomes a `Probe` feeding every cell."""
    if graph.nodes(Cell):
        raise ValueError("graph: a policy is already applied (it has cache cells)")
    policy_name(policy)
    probe = needs_probe(policy)
    new = graph.copy()
    generation = new.spec.generation if new.spec is not None else 0
    for units in forwards(new).values():
        probe_node = None
        if probe:
            if new.spec.num_blocks < 2:
                raise ValueError("policy: a first-block probe needs a model with at least 2 blocks")
            probe_node, units = chain_units(new, units, unit_ranges(new.spec.granularity, new.spec.num_blocks,
                                                                   first=1), probe=Probe)
        for unit in units:
            first = unit.step == 0
            cell = new.replace_node(unit, Cell(unit.step, unit.branch, unit.unit, unit.blocks,
                                               mode=COMPUTE if first else DECIDE, consult=first,
                                               generation=generation, model=unit.model))
            if probe_node is not None:
                new.add_edge(probe_node, cell, port="probe", select="residual")
    return new


@register_pass
@attrs.frozen
class ApplyPolicy(Pass):
    """`apply_policy(policy=NAME)` as a pipeline pass; the policy object is bound when built."""

    name = "apply_policy"
    policy: Any = attrs.field(metadata=bound(text=policy_name, always=True))

    def run(self, graph: Graph) -> Graph:
        return apply_policy(graph, self.policy)


def is_policy(obj: Any) -> bool:
    return isinstance(obj, (str, CachePolicy))
