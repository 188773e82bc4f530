"""`apply_policy`: a cache policy becomes a rewrite of every unit into a `Cell` it decides."""

from __future__ import annotations

import ast
from typing import Any

import attrs

from edit.graph import COMPUTE, DECIDE, Cell, Graph, Probe, unit_ranges
from edit.passes.base import PASSES, Pass, Pipeline, _parse_one, _split, bound, register_pass
from edit.passes.policy import CachePolicy, make_policy, policy_class, policy_from_text
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
    first_step: dict[str, int] = {}
    for step in range(new.spec.num_steps):
        first_step.setdefault(new.spec.model_at(step), step)
    for units in forwards(new).values():
        probe_node = None
        if probe:
            if new.spec.num_blocks < 2:
                raise ValueError("policy: a first-block probe needs a model with at least 2 blocks")
            probe_node, units = chain_units(new, units, unit_ranges(new.spec.granularity, new.spec.num_blocks,
                                                                   first=1), probe=Probe)
        for unit in units:
            first = unit.step == first_step[unit.model]  # each model's cells start over: nothing crosses a switch
            cell = new.replace_node(unit, Cell(unit.step, unit.branch, unit.unit, unit.blocks,
                                               mode=COMPUTE if first else DECIDE, consult=first,
                                               generation=generation, model=unit.model))
            if probe_node is not None:
                new.add_edge(probe_node, cell, port="probe", select="residual")
    return new


def to_policy(value: Any) -> CachePolicy:
    """ApplyPolicy's converter: a registered name (or a CachePolicy subclass) becomes the policy
    with its defaults; an instance stays as it is."""
    if isinstance(value, CachePolicy):
        return value
    if isinstance(value, (str, type)):
        return make_policy(value)
    raise TypeError(f"policy: expected a CachePolicy or a registered policy name, got {type(value).__name__}")


def parse_policy(node: ast.expr) -> CachePolicy:
    """A policy from its text: `fbcache` (its defaults) or `fbcache(rel_l1_thresh=0.3)`, whose
    arguments are Python literals (keywords only: the text names every argument it sets)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return policy_from_text(node.value, {})
    if isinstance(node, ast.Name):
        return policy_from_text(node.id, {})
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ValueError(f"policy: expected a policy name or name(arg=value, ...), got {ast.unparse(node)!r}")
    name = node.func.id
    if node.args or any(k.arg is None for k in node.keywords):
        raise ValueError(f"policy: {name}: arguments are given by keyword, e.g. {name}(rel_l1_thresh=0.1); "
                         f"got {ast.unparse(node)!r}")
    return policy_from_text(name, {k.arg: _policy_literal(name, k) for k in node.keywords})


def _policy_literal(name: str, keyword: ast.keyword) -> Any:
    try:
        return ast.literal_eval(keyword.value)
    except ValueError:
        raise ValueError(f"policy: {name}({keyword.arg}=...): expected a Python literal (number, string, bool, "
                         f"None, tuple, list, dict), got {ast.unparse(keyword.value)!r}") from None


def policy_text(policy: CachePolicy) -> str:
    return policy.to_text()  # the policy's own, a subclass's override included


@register_pass
@attrs.frozen
class ApplyPolicy(Pass):
    """`apply_policy(policy=fbcache(rel_l1_thresh=0.3, warmup_steps=0))` as a pipeline pass: the
    policy prints with all its arguments (`CachePolicy.to_text`), so the text parses back to an
    equal pass. A name given here becomes the registered policy with its defaults."""

    name = "apply_policy"
    policy: CachePolicy = attrs.field(converter=to_policy,
                                      metadata={**bound(text=policy_text, always=True), "parse": parse_policy})

    def run(self, graph: Graph) -> Graph:
        return apply_policy(graph, self.policy)


def pipeline_policy(pipeline: Pipeline | str) -> CachePolicy | None:
    """The policy of `pipeline`'s apply_policy pass (None without one). Of a text, only that pass
    is parsed, so the user function passes a saved plan names (unknown here) do not get in the way.

    >>> pipeline_policy("regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.3)),fora")
    <FirstBlockCache fbcache(rel_l1_thresh=0.3, warmup_steps=0)>
    """
    if isinstance(pipeline, str):
        passes = [_parse_one(item, {}) for item in _split(pipeline) if _is_apply_policy(item)]
    elif isinstance(pipeline, Pipeline):
        passes = list(pipeline.passes)
    else:
        raise TypeError(f"pipeline: expected an edit.passes.Pipeline or its text, got {type(pipeline).__name__}")
    return next((p.policy for p in passes if isinstance(p, ApplyPolicy)), None)


def plan_policy(plan: Any) -> CachePolicy | None:
    """The policy that decides a plan's run-time cells: the one its pipeline text names, with all
    its arguments (None when the text applies none)."""
    text = getattr(plan, "pipeline", None)
    if not isinstance(text, str):
        raise TypeError(f"plan: expected an edit.graph.Plan (with its pipeline text), got {type(plan).__name__}")
    return pipeline_policy(text)


def _is_apply_policy(item: ast.expr) -> bool:
    node = item.func if isinstance(item, ast.Call) else item
    cls = PASSES.get(node.id) if isinstance(node, ast.Name) else None
    return isinstance(cls, type) and issubclass(cls, ApplyPolicy)
