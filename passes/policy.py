"""The cache-policy API: `CachePolicy`, its per-(branch, unit) state, the decision context, the registry.

It lives in `edit.passes` because passes bind and fold policies; users import it from `edit.cache`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:  # the policy API imports no torch: `import edit.passes` stays model-free
    import torch

#: name -> policy class, filled by `register_policy`.
REGISTRY: dict[str, type[CachePolicy]] = {}


#: While folding, every unit of a step sees the same signal tensors: their relative change is
#: computed once per pair (`memoized_relative_l1`), not once per unit.
_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("relative_l1_memo", default=None)


@contextlib.contextmanager
def memoized_relative_l1() -> Iterator[None]:
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    """mean(|cur - prev|) / mean(|prev|), computed in float32, as a Python float."""
    memo = _MEMO.get()
    if memo is not None:
        hit = memo.get((id(cur), id(prev)))
        if hit is not None and hit[0] is cur and hit[1] is prev:
            return hit[2]
    value = _relative_l1(cur, prev)
    if memo is not None:
        memo[(id(cur), id(prev))] = (cur, prev, value)  # holding the tensors keeps their ids unique
    return value


def _relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    cur, prev = cur.float(), prev.float()
    return ((cur - prev).abs().mean() / prev.abs().mean()).item()


@attrs.define(eq=False)
class PolicyState:
    """Mutable state of one (model, branch, unit); `user` is the policy's scratch dict."""

    branch: str
    unit: int
    user: dict[str, Any] = attrs.Factory(dict)
    model: str = "transformer"


def policy_state(policy: CachePolicy | None, states: dict, cell: Any) -> PolicyState:
    """The state of `cell`'s (model, branch, unit) in `states`, made (and reset by the policy) on first use."""
    key = (cell.model, cell.branch, cell.unit)
    state = states.get(key)
    if state is None:
        state = states[key] = PolicyState(cell.branch, cell.unit, model=cell.model)
        if policy is not None:
            policy.reset(state)
    return state


def make_context(cell: Any, state: PolicyState, *, num_steps: int, num_units: int,
                 signals: dict[str, Any] | None = None, hidden: Any = None, encoder_hidden: Any = None,
                 probe: Any = None) -> CacheContext:
    """What a policy sees for `cell`; `e0`/`e`/`encoder_hidden` are the documented aliases of Wan's
    signals of those names (None for a model whose adapter gives no such signal)."""
    signals = signals or {}
    if encoder_hidden is None:
        encoder_hidden = signals.get("encoder_hidden")
    return CacheContext(step=cell.step, num_steps=num_steps, branch=cell.branch, unit_index=cell.unit,
                        num_units=num_units, hidden=hidden, e0=signals.get("e0"), e=signals.get("e"),
                        encoder_hidden=encoder_hidden, state=state, first_block_residual=probe, signals=signals,
                        model=cell.model)


def decide(policy: CachePolicy, cell: Any, context: CacheContext) -> bool:
    """THE decision of a cell, at run time and when folding: the policy is consulted (its state
    advances) and the cell's mode fixes the path unless it is "decide"."""
    verdict = bool(policy.should_compute(context))
    return verdict if cell.mode == "decide" else cell.mode == "compute"


@attrs.frozen(eq=False)
class CacheContext:
    """What a policy sees when deciding whether to compute unit `unit_index` at `step`.

    `signals` holds the model adapter's policy signals by name; for Wan, `e0` is the per-block
    modulation input (diffusers `timestep_proj`) and `e` the time embedding (diffusers `temb`), also
    given as the documented aliases `ctx.e0`/`ctx.e`. `hidden` is the unit's input.
    `first_block_residual` is set for policies with `needs_first_block_probe`. Tensors are None
    when folding ahead of time, which needs only the static signals.
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
    signals: dict[str, Any] = attrs.Factory(dict)
    model: str = "transformer"


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
        load_builtin_policies()
        if policy not in REGISTRY:
            raise ValueError(f"policy: unknown policy {policy!r}; registered: {', '.join(sorted(REGISTRY))}")
        return REGISTRY[policy](**kwargs)
    raise TypeError(f"policy: expected a registered name, a CachePolicy subclass or instance, got {type(policy).__name__}")


def load_builtin_policies() -> None:
    """Register the built-in policies (teacache, fbcache, none) on first use."""
    import edit.passes.policies  # noqa: F401  (registers on import)


def policy_class(name: str) -> type[CachePolicy]:
    """The registered class of `name` (ValueError listing the registered names otherwise)."""
    load_builtin_policies()
    if name not in REGISTRY:
        raise ValueError(f"policy: unknown policy {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def check_threshold(value: Any, name: str = "rel_l1_thresh") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number >= 0, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:  # NaN compares False everywhere: it would never skip
        raise ValueError(f"{name}: expected a finite number >= 0 (0 never skips), got {value}")
    return float(value)
