"""The built-in pass records, `set_cells` as a pass, and the default pipeline — built here only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from edit.graph import CELL_MODES, Graph
from edit.passes.apply_policy import ApplyPolicy
from edit.passes.base import Pass, Pipeline, register_pass
from edit.passes.dce import Dce
from edit.passes.edit import set_cells
from edit.passes.fold import Decisions, FoldStatic
from edit.passes.prefetch import SchedulePrefetch
from edit.passes.regroup import Regroup
from edit.passes.warm_start import WarmStart


def _opt_tuple(value: Any) -> tuple | None:
    if value is None or isinstance(value, (str, int)):
        return value if value is None else (value,)
    return tuple(value)


@register_pass
@attrs.frozen
class SetCells(Pass):
    """`set_cells(mode=reuse, steps=[...], branches=[...], units=[...])` as a pipeline pass."""

    name = "set_cells"
    mode: str = attrs.field(metadata={"text": str, "always": True})
    steps: tuple | None = attrs.field(default=None, converter=_opt_tuple, metadata={"text": lambda v: repr(list(v))})
    branches: tuple | None = attrs.field(default=None, converter=_opt_tuple,
                                         metadata={"text": lambda v: repr(list(v))})
    units: tuple | None = attrs.field(default=None, converter=_opt_tuple, metadata={"text": lambda v: repr(list(v))})
    consult: bool | None = None
    missing: str = "error"

    def __attrs_post_init__(self) -> None:
        if self.mode not in CELL_MODES:
            raise ValueError(f"mode: expected one of {CELL_MODES}, got {self.mode!r}")
        if self.missing not in ("error", "ignore"):
            raise ValueError(f"missing: expected 'error' or 'ignore', got {self.missing!r}")

    def run(self, graph: Graph) -> Graph:
        return set_cells(graph, self.mode, steps=self.steps, branches=self.branches, units=self.units,
                         consult=self.consult, missing=self.missing)


def default_pipeline(*, granularity: str | int = "stack", policy: Any = None, fold: bool = True,
                     decisions: Decisions | None = None, passes: Iterable[Any] = (),
                     prefetch: int | dict[str, Any] | None = None, window: Iterable[int] = (),
                     warm_steps: int | None = None) -> Pipeline:
    """The one place the pass list is built, for every entry point (`__call__`, `compile`,
    `apply_cache_on_transformer`): regroup -> apply_policy -> fold_static (when `fold`) ->
    warm_start (a policy with `warm_steps`, reading the reuse `window`) -> the user's `passes` ->
    schedule_prefetch (`prefetch`: a lead in cells, or the cost model's figures as a dict) -> dce.
    Without a policy: the plain plan at `granularity`."""
    if policy is None:
        return Pipeline([Regroup(granularity)] if granularity != "stack" else [])
    chain: list[Any] = [Regroup(granularity), ApplyPolicy(policy)]
    if fold:
        chain.append(FoldStatic(decisions))
    warm = getattr(policy, "warm_steps", 0) if warm_steps is None else warm_steps
    if warm:
        chain.append(WarmStart(tuple(window), warm))
    chain += list(passes)
    if isinstance(prefetch, dict):
        chain.append(SchedulePrefetch(**prefetch))
    elif prefetch is not None:
        chain.append(SchedulePrefetch(prefetch))
    chain.append(Dce())
    return Pipeline(chain)


__all__ = ["ApplyPolicy", "Dce", "FoldStatic", "Regroup", "SchedulePrefetch", "SetCells", "WarmStart",
           "default_pipeline"]

