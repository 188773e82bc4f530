"""`edit search`: the best static schedule for a budget, from calibration runs, saved as a plan."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edit.cli_checks import CliError, check_model_and_size, check_save, parse_granularity


def add_search_parser(sub, add_run_arguments) -> None:
    search = sub.add_parser("search", help="search the best static schedule for a compute budget",
                            description="Measure the error of every reuse edge on uncached calibration runs, "
                                        "solve for the schedule of the budget that minimises it, print and save "
                                        "it as a plan (replay it with edit generate --plan-file).")
    add_run_arguments(search)
    search.add_argument("--budget", required=True, metavar="B",
                        help="computed steps: a fraction in (0, 1] of --steps (0.5: half) or a count (15)")
    search.add_argument("--prompts", required=True, metavar="FILE",
                        help="calibration prompts, one per line (blank lines and lines starting with # skipped)")
    search.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="one seed per prompt (default: 0, 1, 2, ...)")
    search.add_argument("--objective", default="sum", choices=["sum", "max"],
                        help="minimise the sum of the edges' errors or the largest one (default: sum)")
    search.add_argument("--over", default="mean", choices=["mean", "max"],
                        help="combine the prompts' errors by their mean or worst case (default: mean)")
    search.add_argument("--calibration-cache", default=None, metavar="FILE.json",
                        help="keep the measured errors here; a later search with the same model, prompts, "
                             "seeds and call reads them instead of running again (default: none)")
    search.add_argument("--save", default=None, metavar="PLAN.json",
                        help="write the plan as versioned JSON (default: not saved)")


def _budget(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise CliError(f"--budget: expected a fraction in (0, 1] or a count of steps, got {text!r}") from None
    return int(value) if value.is_integer() and value > 1 else value


def _prompts(path: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"--prompts: cannot read {path!r}: {getattr(err, 'strerror', None) or err}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise CliError(f"--prompts: {path!r} holds no prompt (one per line)")
    return prompts


def _seeds(text: str | None, count: int) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise CliError(f"--seeds: expected integers separated by commas, got {text!r}") from None
    if len(seeds) != count or any(s < 0 for s in seeds):
        raise CliError(f"--seeds: expected {count} seeds >= 0 (one per prompt), got {text!r}")
    return seeds


def search_command(args: argparse.Namespace) -> int:
    from edit.cli import load_pipeline
    from edit.search import budget_steps, search

    for flag in ("cache", "threshold", "wan_variant", "passes"):
        if getattr(args, flag) is not None:
            name = "--pass" if flag == "passes" else f"--{flag.replace('_', '-')}"
            raise CliError(f"{name}: edit search makes its own schedule; drop {name}")
    prompts = _prompts(args.prompts)
    seeds = _seeds(args.seeds, len(prompts))
    budget = _budget(args.budget)
    save_path = check_save(args.save)
    folder, height, width, _ = check_model_and_size(args)
    granularity = parse_granularity(args.granularity)
    from edit.graph import unit_ranges

    try:
        blocks = _blocks(args.model, folder)
        units = 1 if blocks is None else len(unit_ranges(granularity, blocks))
    except (TypeError, ValueError) as err:
        raise CliError(f"--granularity: {str(err).removeprefix('granularity: ')}") from None
    try:  # checked here, before the model loads (the search converts it again)
        budget_steps(budget, args.steps) if units == 1 else budget_steps(budget, args.steps * units, low=units,
                                                                          what="cells")
    except (TypeError, ValueError) as err:
        raise CliError(f"--budget: {str(err).removeprefix('budget: ')}") from None
    pipe = load_pipeline(args.model, folder)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    result = search(pipe, prompts, budget=budget, num_inference_steps=args.steps, objective=args.objective,
                    over=args.over, seeds=seeds, cache_file=args.calibration_cache, progress=True,
                    guidance_scale=args.guidance, height=height, width=width, num_frames=args.frames,
                    negative_prompt=args.negative_prompt, granularity=granularity)
    report(result, args, prompts, time.perf_counter() - start)
    _save(result, save_path)
    return 0


def report(result, args, prompts: list[str], seconds: float) -> None:
    """The schedule (one, or one per unit), each reuse's predicted error, each prompt's own best."""
    from edit.cli import say

    runs = result.costs.runs
    say(f"searched in {seconds:.2f} s ({runs} uncached calibration run{'s' * (runs != 1)}"
        f"{', read from ' + str(args.calibration_cache) if runs == 0 else ''})")
    per_unit = isinstance(result.schedule, tuple)
    if per_unit:
        say(f"computes {sum(s.budget for s in result.schedule)} of {args.steps * len(result.schedule)} cells a "
            "branch, per unit:")
        for u, s in enumerate(result.schedule):
            say(f"  unit {u}: {list(s.computed)} (predicted error {s.value:.4g})")
    else:
        schedule = result.schedule
        say(f"computes {schedule.budget} of {args.steps} steps {list(schedule.computed)}; predicted error "
            f"({args.objective} of edges, {args.over} over {len(prompts)} prompts): {schedule.value:.4g}")
        for (i, j, cost) in schedule.edge_costs:
            if j > i + 1:
                say(f"  reuse step {i} at steps {i + 1}..{j - 1}: {cost:.4g}")
    for prompt, own, shared in zip(prompts, result.per_prompt, result.shared_on_prompt):
        best = (sum if args.objective == "sum" else max)(o.value for o in own) if per_unit else own.value
        say(f"  {prompt[:48]!r}: this schedule {shared:.4g}, its own best {best:.4g}")
    say(result.plan.summary())


def _blocks(model: str, folder) -> int | None:
    """The transformer's block count from its config (None when unknown before loading)."""
    import json

    if model == "tiny":
        from edit.tiny import TINY_TRANSFORMER
        return TINY_TRANSFORMER["num_layers"]
    if folder is None:
        return None
    try:
        return json.loads((Path(folder) / "transformer" / "config.json").read_text())["num_layers"]
    except (OSError, ValueError, KeyError):
        return None


def _save(result, save_path) -> None:
    from edit._output import OutputError
    from edit.cli import say

    if save_path is not None:
        try:
            result.plan.save(save_path)
        except OSError as err:
            raise OutputError("--save", f"cannot write {str(save_path)!r}: {err.strerror or err}") from None
        say(f"wrote {save_path} (replay it with edit generate --plan-file)")
