"""`edit.search`: the best static schedule for a compute budget, from measured reuse errors.

1. Calibration (`measure_edges`): one uncached run per prompt and seed records, at every step, the
   latents, the scheduler's state and each CFG branch's stack residual. Then, for every edge
   i -> j (compute at step i, reuse its residual at steps i+1..j-1), the run is replayed from the
   exact latents after step i with the reuse — an embed and a head per reused step, no blocks —
   and the edge's cost is the mean squared difference of the latents it arrives at (before step
   j; the final latents for j = n) from the exact ones. The replay calls the runtime's own
   kernels, so a plan with that one reuse edge reaches exactly those latents: predicted and
   measured errors are equal where the model is exact (one edge at a time).
2. Search (`search`): the costs over the prompts (mean or worst case) go to the exact dynamic
   programme of `edit.passes.search` (sum or minimax objective, at most `budget` computed steps);
   the schedule becomes a folded plan through the `searched(...)` pass, which records every edge's
   predicted error in the plan's pipeline text: it prints, renders, saves and replays.

Costs are cached to a file keyed by everything they depend on, so a second search reruns nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from edit.graph import Embed, Guide, Head, Plan, Update
from edit.passes.search import OBJECTIVES, Schedule, Searched, SearchedUnits, combine_costs, solve, solve_units


@attrs.frozen
class EdgeCosts:
    """Measured reuse errors: `per_prompt[p][(i, j)]` for calibration run p (prompt and seed)."""

    num_steps: int
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    per_prompt: tuple[dict, ...] = attrs.field(eq=False, repr=False)
    runs: int = 0  # uncached runs this object cost (0 when read from the cache file)
    units: int = 1  # with several (granularity), the keys are (unit, i, j): unit u reusing alone

    def combined(self, over: str = "mean") -> dict:
        return combine_costs(list(self.per_prompt), over)

    def by_unit(self, costs: dict) -> list[dict]:
        """`costs` (keyed (unit, i, j), or (i, j) for one unit) as one {(i, j): cost} per unit."""
        if self.units == 1:
            return [costs]
        return [{(i, j): c for (u, i, j), c in costs.items() if u == unit} for unit in range(self.units)]


def edge_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cost of an edge: the mean squared difference of two latents, in float64."""
    return float((a.double() - b.double()).pow(2).mean())


def _check_prompts(prompts: Any, seeds: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    prompts = (prompts,) if isinstance(prompts, str) else tuple(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError("prompts: expected a prompt or a non-empty list of prompts")
    seeds = tuple(range(len(prompts))) if seeds is None else tuple(seeds)
    if len(seeds) != len(prompts) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                             for s in seeds):
        raise ValueError(f"seeds: expected one int >= 0 per prompt ({len(prompts)}), got {list(seeds)!r}")
    return prompts, seeds


def _cache_key(pipe, prompts, seeds, num_inference_steps: int, call_kwargs: dict, granularity="stack") -> str:
    # the plan's fingerprint: the model's class, config and a digest of its weights' values, the
    # scheduler, sizes, timesteps and guidance (the weights digest reads the values, not the object)
    with pipe.cache_enabled("none"):
        fingerprint = pipe.compile(num_inference_steps, call_kwargs.get("guidance_scale", 5.0),
                                   **{k: call_kwargs[k] for k in ("height", "width", "num_frames")
                                      if k in call_kwargs}).fingerprint
    blob = json.dumps({"prompts": prompts, "seeds": seeds, "steps": num_inference_steps, "call": call_kwargs,
                       "fingerprint": fingerprint, "granularity": granularity}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def measure_edges(pipe, prompts: str | Sequence[str], *, num_inference_steps: int = 30,
                  seeds: Sequence[int] | None = None, cache_file: str | os.PathLike | None = None,
                  progress: bool = False, granularity: str | int = "stack", **call_kwargs: Any) -> EdgeCosts:
    """The cost of every reuse edge on each prompt's exact trajectory (see the module's text):
    `len(prompts)` uncached runs, each followed by n(n-1)/2 cheap replays. `call_kwargs` go to the
    pipeline call (height, width, num_frames, guidance_scale, negative_prompt). With `cache_file`,
    costs measured before for the same model, prompts, seeds and call are read back instead.
    `granularity` (2, "per_block"): each unit's edges, measured with that unit alone reusing and
    the others computed (replays that run the other units' blocks: about units times the cost)."""
    from edit.checks import check_int
    from edit.graph import check_granularity, unit_ranges
    from edit.pipeline import EditWanMixin

    if not isinstance(pipe, EditWanMixin):
        raise TypeError(f"pipe: expected an EditWanPipeline, got {type(pipe).__name__}")
    prompts, seeds = _check_prompts(prompts, seeds)
    check_int(num_inference_steps, "num_inference_steps", low=2, what=" (an edge spans two steps)")
    for reserved in ("output_type", "generator", "num_inference_steps", "prompt", "callback_on_step_end", "plan"):
        if reserved in call_kwargs:
            raise ValueError(f"{reserved}: set by the search; not allowed in call_kwargs")
    if len(pipe.adapters) > 1:
        raise ValueError("pipe: the search measures one model's steps; this pipeline runs two experts")
    check_granularity(granularity, pipe.adapter.num_blocks)
    ranges = unit_ranges(granularity, pipe.adapter.num_blocks)
    key = None
    if cache_file is not None:
        key = _cache_key(pipe, prompts, seeds, num_inference_steps, call_kwargs, granularity)
        found = _read_cache(Path(cache_file), key)
        if found is not None:
            return EdgeCosts(num_inference_steps, prompts, seeds, found, units=len(ranges))
    spec = pipe.run_spec(num_inference_steps, call_kwargs.get("guidance_scale", 5.0))  # branches and guidance
    per_prompt = []
    bar = _progress(len(prompts), progress)
    for prompt, seed in zip(prompts, seeds):
        per_prompt.append(_one_prompt(pipe, prompt, seed, spec, call_kwargs, granularity, ranges))
        bar.update()
    bar.close()
    costs = EdgeCosts(num_inference_steps, prompts, seeds, tuple(per_prompt), runs=len(prompts), units=len(ranges))
    if cache_file is not None:
        _write_cache(Path(cache_file), key, costs)
    return costs


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="calibration runs", unit="run", disable=not show)


def _one_prompt(pipe, prompt: str, seed: int, spec, call_kwargs: dict, granularity, ranges) -> dict:
    from edit.cache.calibrate import _Record
    from edit.runtime.kernels import run_embed, run_guide, run_head, run_update
    from edit.runtime.state import RunState

    steps = spec.num_steps
    residuals: dict[tuple[int, str, int], torch.Tensor] = {}
    hidden_in: dict[tuple[str, int], torch.Tensor] = {}
    after: list[tuple[torch.Tensor, Any]] = []  # the exact latents after each step, the scheduler then
    texts: dict[str, torch.Tensor] = {}

    def before_unit(event) -> None:
        hidden_in[(event.branch, event.unit)] = event.hidden

    def after_unit(event) -> None:
        residuals[(event.step, event.branch, event.unit)] = event.output - hidden_in.pop((event.branch, event.unit))

    def step_end(p, step, t, kwargs):
        texts["cond"], texts["uncond"] = kwargs["prompt_embeds"], kwargs.get("negative_prompt_embeds")
        after.append((kwargs["latents"], copy.deepcopy(p.scheduler)))
        return {}

    with pipe.cache_enabled(_Record(), fold=False, num_inference_steps=steps, granularity=granularity) as cache:
        cache.add_hook("before_unit", before_unit)
        cache.add_hook("after_unit", after_unit)
        pipe(prompt, num_inference_steps=steps, output_type="latent", callback_on_step_end=step_end,
             callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
             generator=torch.Generator("cpu").manual_seed(seed), **call_kwargs)
    dtype = pipe.transformer.dtype
    inputs = {f"text.{b}": texts[b].to(dtype) for b in spec.branches}
    timesteps = after[0][1].timesteps
    costs = {}
    adapter = pipe.adapter
    units = len(ranges)
    with torch.no_grad():
        for unit, i in ((u, i) for u in range(units) for i in range(steps)):
            key = (lambda a, b: (a, b)) if units == 1 else (lambda a, b, unit=unit: (unit, a, b))
            costs[key(i, i + 1)] = 0.0
            if i + 1 == steps:
                continue
            latents, scheduler = after[i][0], copy.deepcopy(after[i][1])
            state = RunState(adapter=adapter, scheduler=scheduler, timesteps=timesteps, inputs=inputs,
                             expand_timesteps=bool(pipe.config.expand_timesteps))
            for k in range(i + 1, steps):
                noise = {}
                for branch in spec.branches:
                    ctx = run_embed(state, Embed(k, branch), latents=latents, text=inputs[f"text.{branch}"])
                    hidden = ctx.hidden
                    for v, (start, stop) in enumerate(ranges):  # this unit reuses, the others compute
                        hidden = hidden + residuals[(i, branch, v)].to(hidden.device) if v == unit \
                            else adapter.run_blocks(start, stop, hidden, ctx)
                    noise[branch] = run_head(state, Head(k, branch), hidden=hidden, ctx=ctx)
                if len(spec.branches) == 2:
                    noise = run_guide(state, Guide(k, spec.guidance_at(k)), cond=noise["cond"],
                                      uncond=noise["uncond"])
                else:
                    noise = noise["cond"]
                latents = run_update(state, Update(k), noise=noise, latents=latents)
                costs[key(i, k + 1)] = edge_error(latents, after[k][0])
    return costs


def _read_cache(path: Path, key: str) -> tuple[dict, ...] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entry, list):
        return None
    return tuple({tuple(int(k) for k in row[:-1]): float(row[-1]) for row in run} for run in entry)


def _write_cache(path: Path, key: str, costs: EdgeCosts) -> None:
    from edit.graph.planio import write_text

    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    data[key] = [[[*k, c] for k, c in sorted(run.items())] for run in costs.per_prompt]
    write_text(path, json.dumps(data))


@attrs.frozen
class SearchResult:
    """The searched `plan`, its `schedule` (computed steps, edges with predicted errors, value; per
    unit, a tuple of them, when searched at a unit granularity), the `costs` it was searched on,
    and each prompt's own best schedule at the budget (`per_prompt`) with the shared schedule's
    value on that prompt (`shared_on_prompt`)."""

    plan: Plan
    schedule: Schedule | tuple[Schedule, ...]
    costs: EdgeCosts = attrs.field(repr=False)
    per_prompt: tuple[Schedule, ...] = attrs.field(repr=False)
    shared_on_prompt: tuple[float, ...]


def budget_steps(budget: int | float, num_steps: int, low: int = 1, what: str = "steps") -> int:
    """Computed steps (or cells) for `budget`: an int is a count, from `low`; a float in (0, 1] a
    fraction of the `num_steps`."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget: expected a count of computed {what} or a fraction in (0, 1], got {budget!r}")
    if isinstance(budget, int):
        if not low <= budget <= num_steps:
            raise ValueError(f"budget: expected from {low} to {num_steps} computed {what}, got {budget}")
        return budget
    if not 0 < budget <= 1:
        raise ValueError(f"budget: expected a fraction in (0, 1] of the {num_steps} {what}, got {budget!r}")
    return max(low, round(budget * num_steps))


def value_of(computed: Sequence[int], costs: dict, num_steps: int, objective: str) -> float:
    """The objective's value of the schedule computing `computed` under `costs`."""
    path = [*computed, num_steps]
    edges = [costs[(i, j)] for i, j in zip(path, path[1:])]
    return sum(edges) if objective == "sum" else max(edges)


def search(pipe, prompts: str | Sequence[str], *, budget: int | float, num_inference_steps: int = 30,
           objective: str = "sum", over: str = "mean", seeds: Sequence[int] | None = None,
           cache_file: str | os.PathLike | None = None, progress: bool = False, guidance_scale: float = 5.0,
           granularity: str | int = "stack", **call_kwargs: Any) -> SearchResult:
    """The schedule of at most `budget` computed steps that minimises the predicted error over the
    calibration prompts (`over`: their mean or worst case; `objective`: the sum or the largest edge
    error), as a folded plan for this pipeline. The pipeline's cache settings are left as they were.
    At a unit `granularity` (2, "per_block") every unit gets a schedule of its own, and `budget`
    counts (or is a fraction of) the computed cells of one branch: steps x units.

    >>> import edit
    >>> pipe = edit.tiny_pipeline()
    >>> result = edit.search.search(pipe, ["a red fox"], budget=3, num_inference_steps=5, height=32, width=48,
    ...                             num_frames=9)
    >>> result.schedule.budget <= 3 and result.schedule.computed[0] == 0
    True
    >>> "searched(computed=[0," in result.plan.pipeline
    True
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
    if over not in ("mean", "max"):
        raise ValueError(f"over: expected 'mean' or 'max', got {over!r}")
    from edit.checks import check_int

    from edit.graph import check_granularity, unit_ranges

    n = check_int(num_inference_steps, "num_inference_steps", low=2, what=" (an edge spans two steps)")
    check_granularity(granularity, pipe.adapter.num_blocks)
    units = len(unit_ranges(granularity, pipe.adapter.num_blocks))
    count = budget_steps(budget, n) if units == 1 else budget_steps(budget, n * units, low=units, what="cells")
    costs = measure_edges(pipe, prompts, num_inference_steps=n, seeds=seeds, cache_file=cache_file,
                          progress=progress, guidance_scale=guidance_scale, granularity=granularity, **call_kwargs)
    size = {k: call_kwargs[k] for k in ("height", "width", "num_frames") if k in call_kwargs}
    if units == 1:
        shared = solve(costs.combined(over), n, count, objective)
        own = tuple(solve(c, n, count, objective) for c in costs.per_prompt)
        on_prompt = tuple(value_of(shared.computed, c, n, objective) for c in costs.per_prompt)
        record = Searched.of(shared)
    else:
        shared = solve_units(costs.by_unit(costs.combined(over)), n, count, objective)
        own = tuple(solve_units(costs.by_unit(c), n, count, objective) for c in costs.per_prompt)
        on_prompt = tuple(_units_value(shared, costs.by_unit(c), n, objective) for c in costs.per_prompt)
        record = SearchedUnits.of(shared)
    with pipe.cache_enabled("none", passes=[record], granularity=granularity, num_inference_steps=n):
        plan = pipe.compile(n, guidance_scale, **size)
    return SearchResult(plan, shared, costs, own, on_prompt)


def _units_value(schedules, costs_by_unit, num_steps: int, objective: str) -> float:
    values = [value_of(s.computed, c, num_steps, objective) for s, c in zip(schedules, costs_by_unit)]
    return sum(values) if objective == "sum" else max(values)
