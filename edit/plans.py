"""Plans and the pipeline: a replay runs only under a call it was compiled for, decided by its own
policy; `enable_cache`'s pipeline text and measured costs."""

from __future__ import annotations

from typing import Any

import attrs

from edit.graph import Cell, DECIDE, Graph, Plan, RunSpec
from edit.passes import ApplyPolicy, Pipeline, plan_policy
from edit.passes.compiler import CacheSettings, CostModel, certain_reads


def check_plan(plan: Any, spec: RunSpec, expected: dict[str, Any]) -> None:
    """Refuse (naming the field) a plan this call cannot run: not a graph, unbound, or compiled for
    another model, weights, scheduler, dtype, size, steps, timesteps, guidance, generation or window."""
    if not isinstance(plan, Graph):
        raise TypeError(f"plan: expected an edit.graph.Plan (from pipe.compile), got {type(plan).__name__}")
    if plan.spec is None:
        raise ValueError("plan: the graph has no RunSpec; build it with pipe.compile or edit.graph.lower")
    if isinstance(plan, Plan):
        if not plan.bound:
            raise ValueError("plan: it was loaded with bind=False (for inspection and rendering only); "
                             "load it bound (Plan.load(path)) to run it")
        problem = plan.mismatch(expected)
        if problem:
            raise ValueError(f"plan: {problem}; compile a plan for this call (pipe.compile)")
    got, want = plan.spec.call_fields(), spec.call_fields()
    for field in attrs.fields(RunSpec):
        if getattr(got, field.name) != getattr(want, field.name):
            raise ValueError(f"plan: {field.name}: the plan was compiled for {getattr(got, field.name)!r}, this "
                             f"call has {getattr(want, field.name)!r}")


def run_policy(plan: Graph, cache: Any) -> Any:
    """The policy that decides a replayed plan's run-time cells: the plan's own, restored from its
    pipeline text with all its arguments, whatever is enabled. The enabled one only for a graph with
    no pipeline text, or for a policy the text names that is not registered (then it must print as
    the text says)."""
    if not any(c.mode == DECIDE or c.consult for c in plan.nodes(Cell)):
        return None
    text = getattr(plan, "pipeline", None)
    if not text:
        return None if cache is None else cache.policy
    try:
        return plan_policy(plan)
    except ValueError as err:
        enabled = None if cache is None else cache.policy
        if enabled is not None and f"apply_policy(policy={enabled.to_text()})" in text:
            return enabled  # an unregistered policy of this process, the very one enabled
        raise ValueError(f"plan: its policy cannot be restored from its pipeline text ({err}); register the "
                         "policy (edit.cache.register_policy) before replaying the plan") from None


def bind_policy(pipeline: Pipeline, policy: Any) -> Pipeline:
    """`pipeline` with its `apply_policy` passes deciding with `policy`; a pass that names another
    policy is refused, naming both."""
    passes = []
    for p in pipeline.passes:
        if isinstance(p, ApplyPolicy):
            if p.policy != policy and p.policy != getattr(policy, "name", None):
                raise ValueError(f"pipeline: its apply_policy decides with {_text(p.policy)}, but the enabled policy "
                                 f"is {_text(policy)}; enable that policy or drop it from the text")
            p = attrs.evolve(p, policy=policy)
        passes.append(p)
    return Pipeline(passes, debug=pipeline.debug)


def _text(policy: Any) -> str:
    return policy if isinstance(policy, str) else getattr(policy, "to_text", policy.describe)()


def own_pipeline(pipeline: Pipeline | str | None, policy: Any) -> Pipeline | None:
    """`enable_cache(pipeline=...)` as a `Pipeline`; a policy it names must be the one enabled."""
    if pipeline is None:
        return None
    if isinstance(pipeline, str):
        pipeline = Pipeline.parse(pipeline)  # refuse bad text now, not at the first call
    elif not isinstance(pipeline, Pipeline):
        raise TypeError(f"pipeline: expected an edit.passes.Pipeline or its text, got {type(pipeline).__name__}")
    return bind_policy(pipeline, policy)


def measured_costs(store: Any, settings: CacheSettings) -> CostModel:
    """`prefetch="auto"`: the slow tier's transfer, measured once, when a plan can have reads to stage."""
    from edit.runtime.store.measure import measure_transfer, slowest_tier

    if settings.prefetch != "auto" or slowest_tier(store) is None or not certain_reads(settings):
        return CostModel()
    measured = measure_transfer(store, 1 << 20)
    return CostModel() if measured is None else CostModel(measured["bandwidth"], measured["latency"])
