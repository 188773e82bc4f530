"""The cache-policy API: `CachePolicy`, its per-(branch, unit) state, the decision context, the registry.

It lives in `edit.passes` because passes bind and fold policies; users import it from `edit.cache`.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import inspect
import math
import warnings
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


#: Set by a sequence-parallel run (`reduced_relative_l1`): sums partial sums over the ranks that
#: hold the other shards of the tokens, so every rank decides from the whole tensor's change.
_REDUCE: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("relative_l1_reduce", default=None)


@contextlib.contextmanager
def reduced_relative_l1(reduce: Callable) -> Iterator[None]:
    """Inside the block, `relative_l1` of a shard is the whole tensor's: `reduce(num, den)` sums
    the two partial sums over the shards (equal shards: the ratio of sums is the ratio of means)."""
    token = _REDUCE.set(reduce)
    try:
        yield
    finally:
        _REDUCE.reset(token)


def _relative_l1(cur: torch.Tensor, prev: torch.Tensor) -> float:
    cur, prev = cur.float(), prev.float()
    reduce = _REDUCE.get()
    if reduce is not None:
        num, den = reduce((cur - prev).abs().sum(), prev.abs().sum())
        return (num / den).item()
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

    A policy is a value: `params()` is every argument it was built with (by default the arguments
    its constructor was called with, defaults included — captured in `__new__`, so a subclass needs
    no code for it; override `params()` to report resolved values), it compares and hashes by its
    class and params, and `to_text()` writes it as `name(arg=value, ...)`, which `Pipeline.parse`
    builds back. That text is what a plan records, so it must not lie: `to_text()` raises
    ValueError, naming the policy and the argument, when an argument is not a Python literal (a
    lambda, a tensor) — wherever the pipeline is printed, which every compile does. A class not
    registered under its `name` prints as its class name, which parses back only once registered.

    >>> from edit.passes import make_policy
    >>> policy = make_policy("fbcache", rel_l1_thresh=0.3)
    >>> policy.to_text()
    'fbcache(rel_l1_thresh=0.3, warmup_steps=0)'
    >>> policy == make_policy("fbcache", rel_l1_thresh=0.3, warmup_steps=0)
    True
    """

    name: ClassVar[str] = "custom"
    needs_first_block_probe: ClassVar[bool] = False
    static_signal: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> CachePolicy:
        if cls.__init__ is object.__init__ and (args or kwargs):  # object.__init__ would not say so
            raise TypeError(f"{cls.__name__}() takes no arguments")
        policy = super().__new__(cls)
        policy._called_with = (args, kwargs)  # what params() reports; copies and pickles keep it
        return policy

    def reset(self, state: PolicyState) -> None:
        """Called at the start of every run for each (branch, unit) state."""

    def should_compute(self, ctx: CacheContext) -> bool:
        """True to run the unit, False to reuse its stored residual."""
        raise NotImplementedError  # abstract

    def params(self) -> dict[str, Any]:
        """Every constructor argument by name: as called, with the defaults of the ones left out."""
        args, kwargs = getattr(self, "_called_with", ((), {}))
        return called_arguments(type(self), args, kwargs)

    def to_text(self) -> str:
        """`name(arg=value, ...)` (a bare name without params): parsed back by `Pipeline.parse`."""
        name = text_name(type(self))
        args = [f"{key}={literal_text(value, f'policy {name}: {key}')}" for key, value in self.params().items()]
        return f"{name}({', '.join(args)})" if args else name

    def describe(self) -> str:
        return self.to_text()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CachePolicy):
            return NotImplemented
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self), _hashable(self.params())))

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.to_text()}>"
        except (TypeError, ValueError):  # a repr never fails; to_text() says what is wrong
            return f"<{type(self).__name__} {text_name(type(self))}>"


def called_arguments(cls: type, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`cls(*args, **kwargs)`'s arguments by name in signature order, defaults filled in; the
    `**kwargs` a constructor collects are flattened (sorted: the same policy prints the same)."""
    signature = inspect.signature(cls.__init__)
    bound = signature.bind(None, *args, **kwargs)  # None stands for self
    bound.apply_defaults()
    params: dict[str, Any] = {}
    for index, (key, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[key].kind
        if index == 0:
            continue  # self
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"policy {text_name(cls)}: positional arguments {value!r} have no names to "
                                 "print; pass them by keyword or override params()")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            params.update(sorted(value.items()))
        else:
            params[key] = value
    return params


def resolved(values: dict[str, Any], called: dict[str, Any]) -> dict[str, Any]:
    """A built-in's `params()`: its resolved `values` first, then any other argument a subclass
    was called with (so a user's subclass of a built-in stays lossless)."""
    return {**values, **{k: v for k, v in called.items() if k not in values}}


def text_name(cls: type) -> str:
    """The name a policy class prints as: its registered name, else its class name."""
    name = getattr(cls, "name", None)
    return name if REGISTRY.get(name) is cls else cls.__name__


def literal_text(value: Any, where: str) -> str:
    """`repr(value)` when `ast.literal_eval` reads it back as an equal value; ValueError otherwise."""
    text = repr(value)
    try:
        same = bool(ast.literal_eval(text) == value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        same = False
    if not same:
        raise ValueError(f"{where}: {text[:60]} is not a Python literal (numbers, strings, bools, None, "
                         "tuples, lists, dicts), so a plan's text cannot carry it; pass a literal or "
                         "override params()")
    return text


def _hashable(value: Any) -> Any:
    """A hashable stand-in for a params value; values that are equal get equal stand-ins."""
    if isinstance(value, dict):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return type(value).__qualname__  # nothing better is known to agree with its ==
    return value


def register_policy(name: str) -> Callable[[type], type]:
    """Class decorator: make a `CachePolicy` subclass available by `name` (e.g. `enable_cache(policy=name)`)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CachePolicy)):
            raise TypeError(f"register_policy({name!r}): {cls!r} is not a subclass of edit.cache.CachePolicy")
        taken = REGISTRY.get(name)
        if taken is not None and taken is not cls and _qualname(taken) != _qualname(cls):
            warnings.warn(f"register_policy({name!r}): replaces {_qualname(taken)} with {_qualname(cls)}",
                          stacklevel=2)
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _unknown_arguments(cls: type, name: str, kwargs: dict[str, Any]) -> None:
    """TypeError naming the policy, the argument and the ones it takes, before the constructor runs."""
    allowed = policy_arguments(cls)
    unknown = [k for k in kwargs if allowed is not None and k not in allowed]
    if unknown:
        raise TypeError(f"policy: {name} has no argument {unknown[0]!r} "
                        f"({'arguments: ' + ', '.join(allowed) if allowed else 'it takes none'})")


def make_policy(policy: str | CachePolicy | type, **kwargs: Any) -> CachePolicy:
    """A policy instance from a registered name, a `CachePolicy` subclass or an instance."""
    if isinstance(policy, CachePolicy):
        if kwargs:
            raise ValueError(f"policy: keyword arguments {sorted(kwargs)} cannot be applied to a policy instance")
        return policy
    if isinstance(policy, type):
        if not issubclass(policy, CachePolicy):
            raise TypeError(f"policy: {policy.__name__} is not a subclass of edit.cache.CachePolicy")
        _unknown_arguments(policy, policy.__name__, kwargs)
        return policy(**kwargs)
    if isinstance(policy, str):
        load_builtin_policies()
        if policy not in REGISTRY:
            raise ValueError(f"policy: unknown policy {policy!r}; registered: {', '.join(sorted(REGISTRY))}")
        _unknown_arguments(REGISTRY[policy], policy, kwargs)
        return REGISTRY[policy](**kwargs)
    raise TypeError(f"policy: expected a registered name, a CachePolicy subclass or instance, got {type(policy).__name__}")


def policy_arguments(cls: type) -> tuple[str, ...] | None:
    """The keyword arguments `cls(...)` takes, following `**kwargs` that a constructor hands to
    its base class's; None when some `**kwargs` may go anywhere (then the constructor checks)."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue  # inherited: a later class in the MRO defines it
        if klass is object:
            return () if cls.__init__ is object.__init__ else None  # else: a `**kwargs` ends here
        parameters = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return tuple(names)
    return None


def policy_from_text(name: str, kwargs: dict[str, Any]) -> CachePolicy:
    """The registered policy `name` built with `kwargs` (the parsed form of `name(arg=value, ...)`);
    ValueError naming the policy and the argument, with the allowed ones, when they do not fit."""
    cls = policy_class(name)
    allowed = policy_arguments(cls)
    for key in kwargs:
        if allowed is not None and key not in allowed:
            raise ValueError(f"policy: {name} has no argument {key!r} "
                             f"({'arguments: ' + ', '.join(allowed) if allowed else 'it takes none'})")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"policy: {name}: {err}") from None


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
