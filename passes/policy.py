"""The cache-policy API: `CachePolicy`, its per-(branch, unit) state, the decision context, the registry.

It lives in `edit.passes` because passes bind and fold policies; users import it from `edit.cache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch

#: name -> policy class, filled by `register_policy`.
REGISTRY: dict[str, type[CachePolicy]] = {}


def relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    """mean(|cur - prev|) / mean(|prev|), computed in float32, as a Python float."""
    cur, prev = cur.float(), prev.float()
    return ((cur - prev).abs().mean() / prev.abs().mean()).item()


@attrs.define(eq=False)
class PolicyState:
    """Mutable state of one (branch, unit); `user` is the policy's scratch dict."""

    branch: str
    unit: int
    user: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen(eq=False)
class CacheContext:
    """What a policy sees when deciding whether to compute unit `unit_index` at `step`.

    `e0` is the per-block modulation input (diffusers `timestep_proj`), `e` the time embedding
    (diffusers `temb`); `hidden` is the unit's input. `first_block_residual` is set for policies
    with `needs_first_block_probe`. Tensors are None when folding ahead of time needs only `e`/`e0`.
    """

    step: int
    num_steps: int
    branch: str
    unit_index: int
    num_units: int
    hidden: torch.Tensor | None
    e0: torch.Tensor | None
    e: torch.Tensor | None
    encoder_hidden: torch.Tensor | None
    state: PolicyState
    first_block_residual: torch.Tensor | None = None


class CachePolicy:
    """Base of every cache policy: decide per step, branch and unit whether to compute.

    `needs_first_block_probe`: block 0 always runs and `ctx.first_block_residual` is provided.
    `static_signal`: decisions depend only on the step and `e`/`e0` (functions of the timestep and
    the weights), so `fold_static` can evaluate them at compile time.
    """

    name: ClassVar[str] = "custom"
    needs_first_block_probe: ClassVar[bool] = False
    static_signal: ClassVar[bool] = False

    def reset(self, state: PolicyState) -> None:
        """Called at the start of every run for each (branch, unit) state."""

    def should_compute(self, ctx: CacheContext) -> bool:
        """True to run the unit, False to reuse its stored residual."""
        raise NotImplementedError  # abstract

    def describe(self) -> str:
        return self.name


def register_policy(name: str) -> Callable[[type], type]:
    """Class decorator: make a `CachePolicy` subclass available by `name` (e.g. `enable_cache(policy=name)`)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CachePolicy)):
            raise TypeError(f"register_policy({name!r}): {cls!r} is not a subclass of edit.cache.CachePolicy")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


def make_policy(policy: str | CachePolicy | type, **kwargs: Any) -> CachePolicy:
    """A policy instance from a registered name, a `CachePolicy` subclass or an instance."""
    if isinstance(policy, CachePolicy):
        if kwargs:
            raise ValueError(f"policy: keyword arguments {sorted(kwargs)} cannot be applied to a policy instance")
        return policy
    if isinstance(policy, type):
        if not issubclass(policy, CachePolicy):
            raise TypeError(f"policy: {policy.__name__} is not a subclass of edit.cache.CachePolicy")
        return policy(**kwargs)
    if isinstance(policy, str):
        if policy not in REGISTRY:
            raise ValueError(f"policy: unknown policy {policy!r}; registered: {', '.join(sorted(REGISTRY))}")
        return REGISTRY[policy](**kwargs)
    raise TypeError(f"policy: expected a registered name, a CachePolicy subclass or instance, got {type(policy).__name__}")


def check_threshold(value: Any, name: str = "rel_l1_thresh") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number >= 0, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:  # NaN compares False everywhere: it would never skip
        raise ValueError(f"{name}: expected a finite number >= 0 (0 never skips), got {value}")
    return float(value)
