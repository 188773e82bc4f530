"""The compiler driver: `compile_plan(spec, model, settings, costs) -> Plan`, a function of its inputs.

Every input is a frozen value — the `RunSpec`, a `ModelInfo` the model's adapter gives, the
`CacheSettings` (the policy with all its arguments, the plan options), a `CostModel` — and every one
of them is recorded in the plan (its pipeline text and fingerprint). Nothing is read from an earlier
call, so the same inputs give the same plan, byte for byte once saved. `EditWanPipeline`,
`apply_cache_on_transformer` and the CLI are thin callers of this one function. Torch-free: the
model's static signals (for folding) come in as a function of the step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import attrs

from edit.graph import Graph, Plan, RunSpec, lower, verify
from edit.graph.plan import DTYPE_BYTES
from edit.passes.base import Pipeline
from edit.passes.builtin import default_pipeline
from edit.passes.fold import FoldStatic, static_decisions
from edit.passes.place import Place
from edit.passes.policy import CachePolicy

#: Spec fields a plan records in its fingerprint (what a call must match to run it).
SPEC_FIELDS = ("num_steps", "timesteps", "guidance_scale", "branches", "num_blocks", "generation")


def _tuple_items(value: Any) -> tuple:
    return tuple(sorted(dict(value).items()))


@attrs.frozen
class ModelInfo:
    """What the compiler knows of a model, as its adapter describes it for one call.

    `model`: the id its records and residual keys carry; `fingerprint`: the model's part of a plan's
    fingerprint (class and config digest, weights digest, dtype, ...); `residual_shape`: the shape of
    one stored residual at this call's size; `signals(step)`: the static policy signals by name (a
    function of the timestep and the weights), for folding; None when they cannot be evaluated ahead
    of the run. `signals` is not part of the value's identity: the weights digest is.
    """

    model: str
    num_blocks: int
    fingerprint: tuple = attrs.field(converter=_tuple_items)
    residual_shape: tuple[int, ...] | None = attrs.field(default=None,
                                                        converter=lambda s: None if s is None else tuple(s))
    signals: Callable[[int], dict[str, Any]] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def residual_bytes(self) -> int | None:
        dtype = dict(self.fingerprint).get("dtype")
        if self.residual_shape is None or dtype not in DTYPE_BYTES:
            return None
        return math.prod(self.residual_shape) * DTYPE_BYTES[dtype]


def _check_prefetch(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value in ("auto", None):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"prefetch: expected 'auto', None or an int >= 1 (cells ahead of each read), got {value!r}")


@attrs.frozen
class CacheSettings:
    """How to cache: the policy (a value with all its arguments) and the plan options — `granularity`,
    `fold` (evaluate a static policy ahead of time), user `passes` (after folding, before prefetches),
    `pipeline` (a `Pipeline` replacing the default one), `prefetch` ("auto": stage the reads that
    certainly happen by the cost model; an int k: every read k cells ahead; None: none), and the
    reuse `window` of earlier generations that warm steps read."""

    policy: CachePolicy | None = None
    granularity: str | int = "stack"
    fold: bool = True
    passes: tuple = attrs.field(default=(), converter=tuple)
    pipeline: Pipeline | None = None
    prefetch: int | str | None = attrs.field(default="auto", validator=_check_prefetch)
    window: tuple[int, ...] = attrs.field(default=(), converter=tuple)


def _opt_positive(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or not value > 0):
        raise ValueError(f"{attribute.name}: expected None or a finite number > 0, got {value!r}")


def _non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name}: expected a finite number >= 0, got {value!r}")


@attrs.frozen
class CostModel:
    """What the prefetch scheduler weighs: the slow tier's `bandwidth` (bytes/s) and `latency` (s per
    read), and the compute time of one block (`block_seconds`; a cell's is that times its blocks).
    Measured once when asked (`prefetch="auto"`: the transfer at `enable_cache`, the block time at
    the first compile that needs it) or given; shown by `pipe.cache.costs`; recorded in the plan's
    pipeline text. A figure left None makes the scheduler stage with a lead of one cell (bandwidth
    None: no slow tier, nothing to stage)."""

    bandwidth: float | None = attrs.field(default=None, validator=_opt_positive)
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    block_seconds: float | None = attrs.field(default=None, validator=_opt_positive)

    def rounded(self) -> CostModel:
        """Two significant figures: what a plan records (measurements are not worth more)."""
        def r(v):
            return None if v is None else float(f"{v:.2g}")
        return CostModel(r(self.bandwidth), r(self.latency) or 0.0, r(self.block_seconds))


def certain_reads(settings: CacheSettings) -> bool:
    """Whether a plan made with `settings` can hold reads that certainly happen (static reuses, warm
    steps, user passes): only those are staged by the cost model."""
    policy = settings.policy
    return bool((settings.fold and getattr(policy, "static_signal", False)) or settings.passes
                or getattr(policy, "warm_steps", 0))


def prefetch_parameters(settings: CacheSettings, model: ModelInfo, costs: CostModel) -> int | dict | None:
    """What `schedule_prefetch` gets: the explicit lead, or the cost model's figures (None: no pass)."""
    if settings.prefetch is None or isinstance(settings.prefetch, int):
        return settings.prefetch
    if costs.bandwidth is None or not certain_reads(settings):
        return None
    costs = costs.rounded()
    unit = None
    if costs.block_seconds is not None:
        blocks = model.num_blocks if settings.granularity == "stack" else \
            1 if settings.granularity == "per_block" else settings.granularity
        unit = float(f"{costs.block_seconds * blocks:.2g}")
    return {"residual_bytes": model.residual_bytes, "bandwidth": costs.bandwidth, "latency": costs.latency,
            "unit_seconds": unit}


def plan_pipeline(settings: CacheSettings | None, model: ModelInfo, costs: CostModel,
                  decisions: Callable[[Graph], dict] | None = None, placement: Place | None = None) -> Pipeline:
    """The pass pipeline of a plan: the settings' own `pipeline`, or `default_pipeline` from them,
    with the fold decisions bound; a `placement` (`place(cfg=..., sequence=...)`) last."""
    pipeline = _cache_pipeline(settings, model, costs, decisions)
    if placement is None or placement == Place():
        return pipeline
    return Pipeline([p for p in pipeline.passes if not isinstance(p, Place)] + [placement], debug=pipeline.debug)


def _cache_pipeline(settings: CacheSettings | None, model: ModelInfo, costs: CostModel,
                    decisions: Callable[[Graph], dict] | None) -> Pipeline:
    if settings is None or settings.policy is None:
        granularity = "stack" if settings is None else settings.granularity
        return default_pipeline(granularity=granularity, passes=() if settings is None else settings.passes)
    if settings.pipeline is not None:
        return Pipeline([attrs.evolve(p, decisions=decisions) if isinstance(p, FoldStatic) else p
                         for p in settings.pipeline.passes], debug=settings.pipeline.debug)
    return default_pipeline(granularity=settings.granularity, policy=settings.policy, fold=settings.fold,
                            decisions=decisions, passes=settings.passes, window=settings.window,
                            prefetch=prefetch_parameters(settings, model, costs))


def fingerprint(spec: RunSpec, model: ModelInfo, extra: dict[str, Any] | None = None,
                window: tuple[int, ...] = ()) -> dict[str, Any]:
    """What a plan is bound to: the model's part, the call's part (`extra`: scheduler, latent shape),
    the spec's fields, the reuse window and the residual shape."""
    out: dict[str, Any] = dict(model.fingerprint)
    out.update(extra or {})
    out.update({f: getattr(spec, f) for f in SPEC_FIELDS})
    out["models"] = spec.models
    out["window"] = tuple(window)
    out["residual_shape"] = model.residual_shape
    return out


def compile_plan(spec: RunSpec, model: ModelInfo, settings: CacheSettings | None = None,
                 costs: CostModel | None = None, *, extra: dict[str, Any] | None = None,
                 placement: Place | None = None) -> tuple[Plan, list]:
    """Lower `spec`, run the pipeline the settings make, verify; the plan and what each pass did.
    `placement` (`Place(cfg=2, sequence=2)`) lays the plan out over ranks, as the last pass.

    A static policy is folded with `model.signals` (fresh policy states, the same decision function
    the runtime uses; no hook fires here). A pass may not change the spec (the error names it).
    """
    if not isinstance(spec, RunSpec):
        raise TypeError(f"spec: expected an edit.graph.RunSpec, got {type(spec).__name__}")
    if not isinstance(model, ModelInfo):
        raise TypeError(f"model: expected a ModelInfo, got {type(model).__name__}")
    if spec.num_blocks != model.num_blocks:
        raise ValueError(f"spec: num_blocks {spec.num_blocks} differs from the model's {model.num_blocks}")
    costs = CostModel() if costs is None else costs
    policy = None if settings is None else settings.policy
    decisions = None
    if policy is not None and getattr(policy, "static_signal", False) and model.signals is not None:
        decisions = functools.partial(static_decisions, policy=policy, signals=model.signals)
    if placement is not None and not isinstance(placement, Place):
        raise TypeError(f"placement: expected an edit.passes.Place, got {type(placement).__name__}")
    pipeline = plan_pipeline(settings, model, costs, decisions, placement)
    graph, records = pipeline.run(lower(spec))
    if not pipeline.debug:
        verify(graph)
    window = () if settings is None else settings.window
    plan = Plan.from_graph(graph, pipeline=str(pipeline), fingerprint=fingerprint(spec, model, extra, window),
                           copy=False)
    return plan, records
