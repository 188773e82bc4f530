"""MagCache (arXiv 2506.09045) as a built-in policy, decision-exact with diffusers' `MagCacheConfig`
hook (`diffusers/hooks/mag_cache.py`).

Per (model, branch, unit) state: after the retention window (`retention_ratio` of the steps, which
always compute), each step multiplies the accumulated ratio by the step's magnitude ratio, counts
one more step and adds |1 - ratio| to the accumulated error; the step reuses while the error stays
within `threshold` and at most `max_skip_steps` (K) steps were reused in a row, and otherwise
computes and resets the accumulators. The decision reads only the precomputed ratios, never the
run's values: it folds into a static schedule (`static_signal`).

diffusers keeps the ratios in a float32 tensor and accumulates in float32 tensors: this module
rounds every value to float32 after each operation as that does (one IEEE rounding of an exact
double result), so its decisions are the hook's to the last bit. Torch-free.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Sequence
from typing import Any

from edit.passes.policy import CacheContext, CachePolicy, PolicyState, register_policy, resolved


def f32(x: float) -> float:
    """`x` rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", x))[0]


def nearest_interp(ratios: Sequence[float], length: int) -> tuple[float, ...]:
    """`ratios` resampled to `length` by nearest index, as MagCache (and diffusers' `nearest_interp`,
    in float32, rounding half to even) does."""
    n = len(ratios)
    if length == n:
        return tuple(ratios)
    if length == 1:
        return (ratios[-1],)
    scale = f32((n - 1) / (length - 1))
    return tuple(ratios[round(f32(f32(float(i)) * scale))] for i in range(length))


def check_ratios(ratios: Any) -> tuple[float, ...]:
    if isinstance(ratios, (str, bytes)) or not hasattr(ratios, "__iter__"):
        raise TypeError(f"mag_ratios: expected a sequence of numbers (one per step), got {type(ratios).__name__}")
    values = tuple(ratios)
    if not values or not all(isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) and r > 0
                             for r in values):
        raise ValueError(f"mag_ratios: expected finite numbers > 0, one per calibrated step, got {values!r}")
    return tuple(f32(float(r)) for r in values)


@register_policy("magcache")
class MagCache(CachePolicy):
    """MagCache: reuse while the accumulated magnitude-ratio error stays within `threshold`, at most
    `max_skip_steps` steps in a row, never in the first `retention_ratio` of the steps. `mag_ratios`:
    one per step (of the run it was calibrated on; resampled by nearest index to the run's steps),
    from `edit.cache.calibrate_magcache` or published tables."""

    static_signal = True

    def __init__(self, *, mag_ratios: Sequence[float], threshold: float = 0.06, max_skip_steps: int = 3,
                 retention_ratio: float = 0.2):
        self.mag_ratios = check_ratios(mag_ratios)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold) \
                or threshold < 0:
            raise ValueError(f"threshold: expected a finite number >= 0 (0 never skips), got {threshold!r}")
        if isinstance(max_skip_steps, bool) or not isinstance(max_skip_steps, int) or max_skip_steps < 0:
            raise ValueError(f"max_skip_steps: expected an int >= 0 (K, reuses in a row), got {max_skip_steps!r}")
        if isinstance(retention_ratio, bool) or not isinstance(retention_ratio, numbers.Real) \
                or not 0 <= retention_ratio <= 1:
            raise ValueError(f"retention_ratio: expected a number in [0, 1], got {retention_ratio!r}")
        self.threshold, self.max_skip_steps = float(threshold), max_skip_steps
        self.retention_ratio = float(retention_ratio)
        self._resampled: dict[int, tuple[float, ...]] = {}

    def ratios(self, num_steps: int) -> tuple[float, ...]:
        found = self._resampled.get(num_steps)
        if found is None:
            found = self._resampled[num_steps] = nearest_interp(self.mag_ratios, num_steps)
        return found

    def reset(self, state: PolicyState) -> None:
        state.user.update(ratio=1.0, steps=0, err=0.0, residual=False)

    def should_compute(self, ctx: CacheContext) -> bool:
        s = ctx.state.user
        step = ctx.step
        compute = True
        if step >= int(self.retention_ratio * ctx.num_steps + 0.5):
            ratios = self.ratios(ctx.num_steps)
            scale = ratios[step] if step < len(ratios) else 1.0
            s["ratio"] = f32(s["ratio"] * scale)
            s["steps"] += 1
            s["err"] = f32(s["err"] + f32(abs(1.0 - s["ratio"])))
            if s["residual"] and s["err"] <= f32(self.threshold) and s["steps"] <= self.max_skip_steps:
                compute = False
            else:
                s.update(ratio=1.0, steps=0, err=0.0)
        if compute:
            s["residual"] = True
        return compute

    def params(self) -> dict[str, Any]:
        return resolved({"mag_ratios": self.mag_ratios, "threshold": self.threshold,
                         "max_skip_steps": self.max_skip_steps, "retention_ratio": self.retention_ratio},
                        super().params())
