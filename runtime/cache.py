"""The cache controller: policy states, the residual store, live stats and unit-level hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import time

import attrs
import torch

from edit.graph import DECIDE, Cell
from edit.passes.compiler import CostModel
from edit.runtime.store.namespace import Namespace


def latest_key_of(key: tuple) -> tuple:
    """The latest-residual key (model, generation, branch, unit) a residual key starts with."""
    return key[:4]
from edit.passes.policy import CacheContext, CachePolicy, PolicyState, decide, make_context, policy_state

HOOK_EVENTS = ("before_unit", "after_decision", "after_unit")


@attrs.define(eq=False)
class UnitEvent:
    """What a hook sees. `after_decision` hooks may return a bool to override `compute`;
    `after_unit` hooks may return a tensor to replace `output`."""

    event: str
    step: int
    branch: str
    unit: int
    hidden: torch.Tensor | None = None
    compute: bool | None = None
    output: torch.Tensor | None = None
    ctx: CacheContext | None = None


class CacheStats:
    """Live counters of one run: computed/skipped unit evaluations and the per-step trace."""

    def __init__(self, store: Any = None) -> None:
        self.computed = 0
        self.skipped = 0
        self.gets = 0  # residual reads asked of the store
        self.get_seconds = 0.0  # time the run was blocked reading residuals (the stall prefetch hides)
        self.seconds = 0.0  # wall time of the run (set at its end)
        self._started = time.perf_counter()
        self._store_at_start = _store_snapshot(store) if store is not None else None
        self.recomputed = 0  # reuse paths whose residual was missing from the store
        self.recomputed_cells: list[tuple[int, str, int]] = []  # their (step, branch, unit)
        self.rows: dict[tuple[str, str, int], list[str]] = {}  # (model, branch, unit) -> a char per step
        self._source = store  # read live until the run ends, then frozen (`freeze_store`)
        self._store: dict[str, Any] | None = None
        self.ranks: list[dict[str, Any]] | None = None  # a run over several ranks: what each rank did
        self.local: dict[str, Any] | None = None  # there, this rank's own counters (the rest are merged in)
        self.compile: Any = None  # a compiled run (pipe.enable_compile): its CompileStats

    @property
    def store(self) -> dict[str, Any] | None:
        """The store's stats (`store.stats.as_dict()`): live during the run, as of its end afterwards."""
        return self._store if self._source is None else _store_snapshot(self._source)

    def resume(self, store: Any) -> None:
        """Count on in another run (its store stats live again; the run clock restarts)."""
        self._source, self._started = store, time.perf_counter()

    def freeze_store(self) -> None:
        if self._source is not None:
            self._store, self._source = _store_snapshot(self._source), None
        self.seconds = time.perf_counter() - self._started

    @property
    def unit_seconds(self) -> float | None:
        """Wall time per computed unit over the run (embedding and head included): the cost
        model's estimate of how much compute one cell of lead hides."""
        return self.seconds / self.computed if self.computed and self.seconds else None

    @property
    def store_delta(self) -> dict[str, Any] | None:
        """The store's counters accrued during this run (segment): prefetches, prefetch hits, late
        waits and their wait time, hits, misses, and per tier the bytes moved in."""
        now, then = self.store, self._store_at_start
        if not isinstance(now, dict) or not isinstance(then, dict):
            return None
        return _delta(now, then)

    def record(self, branch: str, unit: int, computed: bool, model: str = "transformer") -> None:
        self.rows.setdefault((model, branch, unit), []).append("C" if computed else "S")
        if computed:
            self.computed += 1
        else:
            self.skipped += 1

    @property
    def traces(self) -> dict[tuple[str, str, int], str]:
        """{(model, branch, unit_index): "CCSSC..."}, one character per step so far."""
        return {k: "".join(v) for k, v in sorted(self.rows.items())}

    @property
    def trace(self) -> dict[tuple, str]:
        """`traces` keyed by (branch, unit_index) when one model ran (every single-transformer
        pipeline), by (model, branch, unit_index) when several did."""
        traces = self.traces
        if len({m for m, _, _ in traces}) > 1:
            return traces
        return {(b, u): t for (_, b, u), t in traces.items()}

    @property
    def skip_ratio(self) -> float:
        total = self.computed + self.skipped
        return self.skipped / total if total else 0.0

    @property
    def steps_skipped(self) -> float:
        """Fraction of (step, branch) forwards whose whole stack was reused."""
        forwards = skipped = 0
        for forward in sorted({(m, b) for m, b, _ in self.rows}):
            rows = [v for (m, b, _), v in sorted(self.rows.items()) if (m, b) == forward]
            for chars in zip(*rows):
                forwards += 1
                skipped += all(c == "S" for c in chars)
        return skipped / forwards if forwards else 0.0

    def cell_states(self) -> dict[tuple[int, str, int], str]:
        """What every cell of the run did: C computed, S reused, M reused but missed the store and
        recomputed — {(step, branch, unit): state}, e.g. to draw a plan with `trace=`."""
        states = {(step, branch, unit): ch for (_, branch, unit), row in self.rows.items() for step, ch in enumerate(row)}
        for cell in self.recomputed_cells:
            states[cell] = "M"
        return states

    def as_dict(self) -> dict[str, Any]:
        return {"computed": self.computed, "skipped": self.skipped, "recomputed": self.recomputed,
                "gets": self.gets, "get_seconds": self.get_seconds, "seconds": self.seconds,
                "store_delta": self.store_delta,
                "skip_ratio": self.skip_ratio, "steps_skipped": self.steps_skipped,
                "trace": {":".join(map(str, k)): t for k, t in self.trace.items()}, "store": self.store,
                **({"ranks": self.ranks} if self.ranks is not None else {}),
                **({"compile": self.compile.as_dict()} if self.compile is not None else {})}

    def __repr__(self) -> str:
        return (f"<CacheStats computed={self.computed} skipped={self.skipped} recomputed={self.recomputed} "
                f"trace={self.trace!r}>")

    def __str__(self) -> str:
        lines = [f"computed {self.computed}, skipped {self.skipped} ({self.skip_ratio:.0%} of unit evaluations), "
                 f"whole-stack skips {self.steps_skipped:.0%} of forwards, recomputed {self.recomputed}"]
        names = {k: ":".join(map(str, k[:-1])) + f":u{k[-1]}" for k in self.trace}
        width = max(map(len, names.values()), default=0)
        for key, trace in self.trace.items():
            lines.append(f"  {names[key]:<{width}}  {trace}")
        if isinstance(self.store, dict):
            lines += store_lines(self.store)
        elif self.store is not None:  # a custom store whose stats are not a StoreStats/TieredStats
            lines.append(f"store: {self.store!r}")
        return "\n".join(lines)


def _delta(now: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in now.items():
        old = then.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(old, (int, float)):
            out[key] = value - old
        elif key == "tiers" and isinstance(value, (list, tuple)) and isinstance(old, (list, tuple)) \
                and len(old) == len(value):
            out[key] = [{k: (v - o[k] if isinstance(v, (int, float)) and k not in ("budget", "nbytes", "entries")
                             else v) for k, v in t.items()} for t, o in zip(value, old)]
    return out


def _store_snapshot(store: Any) -> Any:
    stats = getattr(store, "stats", None)
    return stats.as_dict() if hasattr(stats, "as_dict") else stats


def store_lines(store: dict[str, Any]) -> list[str]:
    """The store snapshot (`StoreStats`/`TieredStats.as_dict()`) as table lines: totals, then one per tier."""
    def counts(d: dict[str, Any]) -> str:
        return ", ".join(f"{k} {d[k]}" for k in ("hits", "misses", "spills", "evictions", "lost") if k in d)

    lines = [f"store: {store.get('entries', 0)} entries, {store.get('nbytes', 0):,} B; {counts(store)}"]
    tiers = store.get("tiers") or []
    width = max((len(t["name"]) for t in tiers), default=0)
    for t in tiers:
        budget = "unbounded" if t["budget"] is None else f"{t['budget']:,} B"
        lines.append(f"  {t['name']:<{width}}  {t['nbytes']:>12,} B of {budget}, {t['entries']} entries; {counts(t)}")
    return lines


class CacheController:
    """`pipe.cache`: the bound policy, its per-(model, branch, unit) states, the residual store, stats,
    hooks, the generation and reuse window of long videos, and the measured `costs`.

    Plan settings (granularity, folding, prefetch, user passes) are not kept here: they are the
    parameters of the passes in the plan's pipeline (`pipe.cache_pipeline`).
    """

    def __init__(self, policy: CachePolicy | None, *, store: Any, costs: CostModel | None = None,
                 keep_generations: int | None = None):
        self.policy = policy
        self.store = store  # the store as given; this controller's entries live in `residuals`
        self.residuals = Namespace(store)  # its own namespace: a store shared by two pipelines is safe
        if keep_generations is not None and (isinstance(keep_generations, bool) or
                                             not isinstance(keep_generations, int) or keep_generations < 1):
            raise ValueError(f"keep_generations: expected None or an int >= 1, got {keep_generations!r}")
        self.keep_generations = keep_generations
        self.generation = 0
        self.reuse_window: tuple[int, ...] = ()
        self._generation_set = False
        self.costs = CostModel() if costs is None else costs  # the prefetch cost model: explicit, never from a run
        self.stats = CacheStats(self.store)
        self.states: dict[tuple[str, str, int], PolicyState] = {}
        self.hooks: dict[str, list[Callable[[UnitEvent], Any]]] = {e: [] for e in HOOK_EVENTS}
        self.num_steps = 0
        self.num_units = 0
        self.run_policy: CachePolicy | None = policy  # the policy deciding this run's cells (a plan's own)
        self.agree: Callable[[Cell, bool], bool] | None = None  # several ranks: checks they decided alike

    # -- user API -----------------------------------------------------------------------------
    def add_hook(self, event: str, fn: Callable[[UnitEvent], Any]) -> Callable[[], None]:
        """Call `fn(UnitEvent)` at `event` (before_unit / after_decision / after_unit); returns a remover.

        All three fire at run time. `after_decision` fires for the cells decided at run time, and
        may return a bool to override the decision; while such a hook is registered, a static policy
        is not folded (its cells are decided at run time, with the decisions a folded plan has), so
        the hook sees every decision.
        """
        if event not in HOOK_EVENTS:
            raise ValueError(f"event: expected one of {HOOK_EVENTS}, got {event!r}")
        if not callable(fn):
            raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
        self.hooks[event].append(fn)
        return lambda: self.hooks[event].remove(fn) if fn in self.hooks[event] else None

    @property
    def decision_hooks(self) -> bool:
        return bool(self.hooks["after_decision"])

    def set_generation(self, generation: int) -> None:
        """Residuals of later runs are keyed by this generation id (a segment of a long video)."""
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise ValueError(f"generation: expected an int >= 0, got {generation!r}")
        self.generation = generation
        self._generation_set = True
        self.reuse_window = tuple(g for g in self.reuse_window if g < generation)

    def set_reuse_window(self, generations: Any) -> None:
        """The earlier generations whose kept residuals the warm steps of the next runs reuse
        (`warmstart_reuse`); each must be older than the current generation."""
        if not self._generation_set:
            raise ValueError("set_reuse_window: set the current generation first (pipe.cache.set_generation(g))")
        try:
            window = tuple(sorted({g for g in generations}))
        except TypeError:
            raise TypeError(f"generations: expected an iterable of generation ids, got {type(generations).__name__}") from None
        for g in window:
            if isinstance(g, bool) or not isinstance(g, int) or g < 0:
                raise ValueError(f"generations: expected ints >= 0, got {g!r}")
            if g >= self.generation:
                raise ValueError(f"generations: the window {list(window)} holds generation {g}, not older than the "
                                 f"current generation {self.generation} (a segment reuses earlier segments only)")
        self.reuse_window = window

    def reset(self, clear_store: bool = False) -> None:
        """Forget policy states and stats; with `clear_store`, drop every stored residual."""
        self.states.clear()
        self.stats = CacheStats(self.store)
        if clear_store and self.store is not None:
            self.residuals.clear()

    # -- runtime side -------------------------------------------------------------------------
    def begin_run(self, num_steps: int, num_units: int, reset: bool = True, policy: CachePolicy | None = None) -> None:
        """Start a run: with `reset` (the default), fresh policy states and stats; without, both go
        on from the previous run (after a `reset()` of your own, as a segment loop does). `policy`:
        the one deciding this run's cells (a replayed plan's own; default: the enabled one)."""
        if reset:
            self.states.clear()
            self.stats = CacheStats(self.store)
        else:
            self.stats.resume(self.store)
        self.run_policy = self.policy if policy is None else policy
        self.num_steps, self.num_units = num_steps, num_units

    def end_run(self) -> None:
        self.drop_old_generations()
        self.stats.freeze_store()

    def kept_generations(self, generations: Any) -> set[int]:
        """Which of `generations` a later run can still read: the current one and those of the reuse
        window in use, and every one since the window's oldest; with `keep_generations=k`, the k
        most recent (and the window's)."""
        current, window = self.generation, set(self.reuse_window)
        if self.keep_generations is not None:
            recent = sorted({g for g in generations if g <= current} | {current})[-self.keep_generations:]
            return set(recent) | window
        oldest = min(window | {current})
        return {g for g in generations if oldest <= g <= current} | {current}

    def drop_old_generations(self) -> int:
        """Drop this controller's residuals that no later run can read (so a long video's store
        stays bounded): those of generations no window reads any more, and an earlier generation's
        latest residuals (only its own run reads them; a window reads step keys). Returns how many
        entries went."""
        keys = [k for k in self.residuals.keys() if len(k) >= 2 and isinstance(k[1], int)]
        keep = self.kept_generations({k[1] for k in keys})
        dropped = [k for k in keys if k[1] not in keep or (k[1] != self.generation and k == latest_key_of(k))]
        for key in dropped:
            self.residuals.drop(key)
        return len(dropped)

    def context(self, cell: Cell, *, hidden: Any = None, signals: dict[str, Any] | None = None,
                encoder_hidden: Any = None, probe: Any = None) -> CacheContext:
        return make_context(cell, policy_state(self.run_policy, self.states, cell), num_steps=self.num_steps,
                            num_units=self.num_units, signals=signals, hidden=hidden,
                            encoder_hidden=encoder_hidden, probe=probe)

    def decide(self, cell: Cell, context: CacheContext) -> bool:
        """The run-time decision of a cell (`edit.passes.policy.decide`, the one folding uses), then
        the `after_decision` hooks, which may override a "decide" cell."""
        if self.run_policy is None:
            raise ValueError(f"%{cell.name}: this cell is decided by a policy; enable a cache with one "
                             "(pipe.enable_cache(policy=...))")
        compute = decide(self.run_policy, cell, context)
        decided = cell.mode == DECIDE
        for fn in self.hooks["after_decision"]:
            out = fn(UnitEvent("after_decision", cell.step, cell.branch, cell.unit, hidden=context.hidden,
                               compute=compute, ctx=context))
            if out is not None and decided:
                compute = bool(out)
        if self.agree is not None:
            compute = self.agree(cell, compute)
        return compute

    def fire(self, event: str, cell: Any, **fields: Any) -> Any:
        result = None
        for fn in self.hooks[event]:
            out = fn(UnitEvent(event, cell.step, cell.branch, cell.unit, **fields))
            result = out if out is not None else result
        return result
