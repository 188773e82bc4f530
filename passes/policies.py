"""Built-in cache policies: `teacache`, `warmstart_reuse`, `fbcache`, `none` (exact algorithms:
shared/REFERENCE.md). Each reports its resolved arguments as `params()`, so it prints losslessly."""

from __future__ import annotations

import math
import numbers
from typing import Any

from edit.passes.policy import (CacheContext, CachePolicy, PolicyState, check_threshold, register_policy, relative_l1,
                                resolved)

#: The architecture (layers, hidden width) each published variant's coefficients were fitted on.
TEACACHE_ARCHITECTURES: dict[str, tuple[int, int]] = {"t2v-1.3B": (30, 1536), "t2v-14B": (40, 5120),
                                                      "i2v-480P": (40, 5120), "i2v-720P": (40, 5120),
                                                      "toy": (8, 128)}

#: TeaCache4Wan2.1 rescaling polynomials (highest degree first): variant -> {use_ret_steps: coefficients}.
TEACACHE_COEFFICIENTS: dict[str, dict[bool, tuple[float, ...]]] = {
    "t2v-1.3B": {
        True: (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
        False: (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
    },
    "t2v-14B": {
        True: (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
        False: (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    },
    "i2v-480P": {
        True: (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
        False: (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
    },
    "i2v-720P": {
        True: (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
        False: (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    },
    # the trained toy (edit.toy), fitted by edit.cache.calibrate_teacache on 4 training-grammar
    # captions, 30 steps, CFG 5, 17x64x64 (mean abs error 0.016 and 0.016 of the relative change)
    "toy": {
        True: (408.0842035289685, -140.0249167697429, 7.075275629795495, 2.21825885144044, -0.03617961481613453),
        False: (1063.3983160036037, -717.8461083722191, 167.34189081382394, -14.582522633434374, 0.46363799352745755),
    },
}


class _Horner:
    """`numpy.poly1d(coefficients)` on a Python float: the same float64 Horner steps numpy's
    `polyval` takes (y = y * x + c from y = 0), so the same bits, without numpy's per-call cost."""

    def __init__(self, coefficients: tuple[float, ...]):
        self.coefficients = coefficients

    def __call__(self, x: float) -> float:
        y = 0.0
        for c in self.coefficients:
            y = y * x + c
        return y


@register_policy("none")
class NoCache(CachePolicy):
    """Never skips: the decision/reuse machinery is in place but every unit computes."""

    static_signal = True

    def should_compute(self, ctx: CacheContext) -> bool:
        return True


@register_policy("teacache")
class TeaCache(CachePolicy):
    """TeaCache for Wan2.1: accumulate the rescaled relative L1 change of the timestep signal and
    skip while it stays under `rel_l1_thresh`.

    The signal is `e0` (with `use_ret_steps=True`: steps < 5 always compute) or `e`
    (`use_ret_steps=False`: the first and last steps always compute). `rel_l1_thresh=0` never skips.
    """

    static_signal = True

    def __init__(self, *, rel_l1_thresh: float = 0.2, wan_variant: str = "t2v-1.3B",
                 coefficients: list[float] | tuple[float, ...] | None = None, use_ret_steps: bool = True):
        self.rel_l1_thresh = check_threshold(rel_l1_thresh)
        if not isinstance(use_ret_steps, bool):
            raise TypeError(f"use_ret_steps: expected a bool, got {type(use_ret_steps).__name__}")
        self.use_ret_steps = use_ret_steps
        self.published = coefficients is None  # fitted on wan_variant's checkpoint, not on this model
        if coefficients is None:
            if wan_variant not in TEACACHE_COEFFICIENTS:
                raise ValueError(f"wan_variant: unknown {wan_variant!r}; expected one of "
                                 f"{', '.join(TEACACHE_COEFFICIENTS)} (or pass coefficients=[...])")
            coefficients = TEACACHE_COEFFICIENTS[wan_variant][use_ret_steps]
        else:
            coefficients = _check_coefficients(coefficients)
        self.wan_variant = wan_variant
        self.coefficients = tuple(coefficients)
        self.poly = _Horner(self.coefficients)

    def reset(self, state: PolicyState) -> None:
        state.user.update(acc=0.0, prev=None)

    def forced(self, step: int, num_steps: int) -> bool:
        return step < 5 if self.use_ret_steps else step in (0, num_steps - 1)

    def should_compute(self, ctx: CacheContext) -> bool:
        s = ctx.state.user
        signal = ctx.e0 if self.use_ret_steps else ctx.e
        prev, s["prev"] = s["prev"], signal
        if self.forced(ctx.step, ctx.num_steps) or prev is None:
            s["acc"] = 0.0
            return True
        s["acc"] += float(self.poly(relative_l1(signal, prev)))
        if self.rel_l1_thresh > 0 and s["acc"] < self.rel_l1_thresh:
            return False
        s["acc"] = 0.0
        return True

    def params(self) -> dict[str, Any]:
        # the coefficients as used, so a plan keeps them even if the table above changes
        return resolved({"rel_l1_thresh": self.rel_l1_thresh, "wan_variant": self.wan_variant,
                         "coefficients": self.coefficients, "use_ret_steps": self.use_ret_steps}, super().params())


@register_policy("warmstart_reuse")
class WarmstartReuse(TeaCache):
    """Long videos, segment by segment: the first `warm_steps` steps of a segment reuse the mean of
    the residuals that the segments of the reuse window kept for those steps (`warm_start` pass);
    TeaCache (every `teacache` argument) for the rest of the run."""

    def __init__(self, *, warm_steps: int = 2, **teacache_kwargs):
        from edit.passes.warm_start import check_warm_steps

        self.warm_steps = check_warm_steps(warm_steps)
        super().__init__(**teacache_kwargs)

    def params(self) -> dict[str, Any]:
        return resolved({"warm_steps": self.warm_steps}, super().params())


@register_policy("fbcache")
class FirstBlockCache(CachePolicy):
    """First-Block-Cache: block 0 always runs; reuse the rest while its residual changes by less
    than `rel_l1_thresh` (relative L1) from the residual of the last computed step."""

    needs_first_block_probe = True

    def __init__(self, *, rel_l1_thresh: float = 0.1, warmup_steps: int = 0):
        self.rel_l1_thresh = check_threshold(rel_l1_thresh)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an int >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps

    def reset(self, state: PolicyState) -> None:
        state.user["prev_r0"] = None

    def should_compute(self, ctx: CacheContext) -> bool:
        s = ctx.state.user
        r0, prev = ctx.first_block_residual, s["prev_r0"]
        hit = (prev is not None and self.rel_l1_thresh > 0 and ctx.step >= self.warmup_steps
               and relative_l1(r0, prev) < self.rel_l1_thresh)
        if not hit:
            s["prev_r0"] = r0  # the reference moves on misses only
        return not hit

    def params(self) -> dict[str, Any]:
        return resolved({"rel_l1_thresh": self.rel_l1_thresh, "warmup_steps": self.warmup_steps}, super().params())


def _check_coefficients(coefficients) -> tuple[float, ...]:
    # A str is a sequence too: '12' would be read as the polynomial 1x + 2.
    if isinstance(coefficients, (str, bytes)) or not hasattr(coefficients, "__iter__"):
        raise TypeError(f"coefficients: expected a sequence of numbers (highest degree first), "
                        f"got {type(coefficients).__name__} {coefficients!r}")
    values = tuple(coefficients)
    if not all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in values):
        raise TypeError(f"coefficients: expected a sequence of numbers (highest degree first), got {values!r}")
    if not values:
        raise ValueError("coefficients: expected at least one number")
    if not all(math.isfinite(c) for c in values):
        raise ValueError(f"coefficients: expected finite numbers, got {values!r}")
    return tuple(float(c) for c in values)


@register_policy("per_model")
class PerModel(CachePolicy):
    """One policy per model of a run (Wan2.2's two experts): the registered `base` policy built with
    `args` for every model, and for each model id in `models` with `args` updated by its own
    (`per_model(base='teacache', args={'rel_l1_thresh': 0.1}, models={'transformer_2':
    {'rel_l1_thresh': 0.15}})`). Each cell is decided by its model's policy, with its model's state;
    every argument is a literal, so a plan records and restores it. `enable_cache(policy,
    per_model={...})` builds it."""

    def __init__(self, base: str, args: dict | None = None, models: dict | None = None):
        from edit.passes.policy import make_policy

        if not isinstance(base, str) or base == "per_model":
            raise ValueError(f"base: expected the registered name of another policy, got {base!r}")
        args = {} if args is None else args
        models = {} if models is None else models
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            raise TypeError(f"args: expected a dict of the policy's arguments by name, got {args!r}")
        if not isinstance(models, dict) or not all(isinstance(k, str) and k and isinstance(v, dict)
                                                   for k, v in models.items()):
            raise TypeError(f"per_model: expected {{model id: {{argument: value}}}}, got {models!r}")
        self.base, self.args, self.models = base, dict(args), {k: dict(v) for k, v in models.items()}
        self.default = make_policy(base, **self.args)
        self.by_model = {m: make_policy(base, **{**self.args, **kw}) for m, kw in self.models.items()}
        # what the passes read of a policy: one value for every model
        self.static_signal = self.default.static_signal
        self.needs_first_block_probe = self.default.needs_first_block_probe
        if hasattr(self.default, "warm_steps"):
            if any(getattr(p, "warm_steps", None) != self.default.warm_steps for p in self.by_model.values()):
                raise ValueError("per_model: warm_steps must be the same for every model")
            self.warm_steps = self.default.warm_steps

    def policy_for(self, model: str) -> CachePolicy:
        return self.by_model.get(model, self.default)

    def reset(self, state: PolicyState) -> None:
        self.policy_for(state.model).reset(state)

    def should_compute(self, ctx: CacheContext) -> bool:
        return self.policy_for(ctx.model).should_compute(ctx)

    def params(self) -> dict[str, Any]:
        # the sub-policies' resolved arguments (TeaCache's coefficients as used), so a plan keeps them
        default = self.default.params()
        models = {m: {k: v for k, v in p.params().items() if default.get(k) != v or k in self.models[m]}
                  for m, p in self.by_model.items()}
        return {"base": self.base, "args": default, "models": models}


from edit.passes.magcache import MagCache  # noqa: E402,F401  (registers "magcache"; its module needs this one's base)
