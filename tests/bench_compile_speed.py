"""Caching with torch.compile, on this CPU: a compiled folded EDiT plan against the same plan eager,
diffusers' WanPipeline with `transformer.compile()` and its FirstBlockCache hook, and cache-dit's
DBCache F1B0 with `transformer.compile()` (when cache-dit is installed), all at the same skipped
cells.

    python tests/bench_compile_speed.py                       # mid config, 30 steps, 3 rounds
    python tests/bench_compile_speed.py --config tiny --steps 6 --rounds 1    # a smoke run

The skip schedule is diffusers' FBCache's at `--threshold` (eager run, recorded per forward: which
(step, branch) forwards it reused); the EDiT plans are that schedule folded: FBCache's plan shape,
block 0 computed and blocks 1.. one cell reused where FBCache reused it (the same skipped cells:
EDiT "folded", every cell fixed by `set_cells`), and at stack granularity (the whole forward reused, block 0 too: EDiT "folded stack").
Each arm's first call is its compile (reported apart); then rounds of one call per arm in
rotating order, the denoising timed (output_type="latent"); medians and the median of per-round
ratios. dynamo's counters (graphs, graph breaks, recompiles) are read around the second call.
Prints a table and writes bench_compile_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS  # noqa: E402

PROMPT = "a red fox running through snow, cinematic, golden hour"


def counters() -> tuple[int, int]:
    from torch._dynamo.utils import counters as c

    return c["stats"]["unique_graphs"], sum(c["graph_break"].values())


def call(pipe, args, seed: int = 0) -> float:
    spec = CONFIGS[args.config]
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=args.steps, height=spec["height"], width=spec["width"],
         num_frames=spec["frames"], generator=torch.Generator().manual_seed(seed), output_type="latent")
    return time.perf_counter() - start


def fbcache_schedule(comps, args) -> list[tuple[int, str]]:
    """The (step, branch) forwards diffusers' FBCache hook reuses at `--threshold`, eager."""
    from diffusers import FirstBlockCacheConfig, WanPipeline

    pipe = WanPipeline(**{k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()})
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.threshold))
    forwards: list[bool] = []
    pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(False))
    pipe.transformer.blocks[-1].ffn.register_forward_hook(lambda *a: forwards.__setitem__(-1, True))  # runs only when the block computes
    call(pipe, args)
    return [(i // 2, ("cond", "uncond")[i % 2]) for i, computed in enumerate(forwards) if not computed]


def edit_arm(comps, args, skipped, granularity, compiled: bool):
    """EDiT with FBCache's schedule folded: `granularity="probe"` — block 0 computed (FBCache's
    probe) and blocks 1.. one cell, reused where FBCache reused them (the same skipped cells);
    "stack" — the whole forward one cell, reused there (block 0 too)."""
    import edit
    from edit.passes import SetCells

    pipe = edit.EditWanPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    steps = {s for s, _ in skipped}
    passes = [SetCells("compute", steps=sorted(set(range(args.steps)) - steps))]
    passes += [SetCells("reuse", steps=[s], branches=[b]) for s, b in skipped]
    if granularity == "probe":  # fbcache's plan shape (a probe, then one cell), every cell fixed by the passes
        pipe.enable_cache("fbcache", passes=passes)
    else:
        pipe.enable_cache("none", passes=passes)
    if compiled:
        pipe.enable_compile()
    return pipe


def diffusers_arm(comps, args, kind: str, threshold: float):
    from diffusers import FirstBlockCacheConfig, WanPipeline

    pipe = WanPipeline(**{k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()})
    pipe.set_progress_bar_config(disable=True)
    if kind == "fbcache":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    else:
        import cache_dit

        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=0,
            num_inference_steps=args.steps))
    pipe.transformer.compile()
    return pipe


def cache_dit_skips(comps, args, threshold: float) -> int:
    """Forwards cache-dit's DBCache F1B0 reuses at `threshold` (eager)."""
    import cache_dit
    from diffusers import WanPipeline

    pipe = WanPipeline(**{k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()})
    pipe.set_progress_bar_config(disable=True)
    calls = [0]
    pipe.transformer.blocks[-1].ffn.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=0,
        num_inference_steps=args.steps))
    call(pipe, args)
    return 2 * args.steps - calls[0]


def match_dbcache(comps, args, target: int) -> tuple[float, int] | None:
    """cache-dit's threshold (bisected, its skip count grows with it) whose reused forwards equal
    FBCache's `target`; None without cache-dit installed."""
    try:
        import cache_dit  # noqa: F401
    except ImportError:
        return None
    low, high = 1e-4, 2.0
    best = (high, cache_dit_skips(comps, args, high))
    for _ in range(10):
        mid = (low * high) ** 0.5
        got = cache_dit_skips(comps, args, mid)
        if abs(got - target) < abs(best[1] - target):
            best = (mid, got)
        if got == target:
            break
        low, high = (mid, high) if got < target else (low, mid)
    return best


def profile(pipe, args) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        call(pipe, args, seed=99)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mid")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.15,
                        help="FBCache's threshold (cache-dit's is bisected to reuse as many forwards)")
    parser.add_argument("--out", default="bench_compile_speed.json")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one call of the eager and the compiled EDiT arm: where the time goes")
    args = parser.parse_args()
    torch._inductor.config.compile_threads = 1  # 2 cores: a compile-worker pool costs more than it saves

    import edit

    comps = edit.tiny_components(seed=0, **CONFIGS[args.config]["model"])
    skipped = fbcache_schedule(comps, args)
    dbcache = match_dbcache(comps, args, len(skipped))
    print(f"FBCache {args.threshold} reuses {len(skipped)} of {2 * args.steps} forwards: {skipped}")
    if dbcache is not None:
        print(f"cache-dit DBCache F1B0 at {dbcache[0]:.4g} reuses {dbcache[1]} forwards")
    arms = {
        "EDiT folded, eager": lambda: edit_arm(comps, args, skipped, "probe", False),
        "EDiT folded, compiled": lambda: edit_arm(comps, args, skipped, "probe", True),
        "EDiT folded stack, compiled": lambda: edit_arm(comps, args, skipped, "stack", True),
        "diffusers FBCache + compile": lambda: diffusers_arm(comps, args, "fbcache", args.threshold),
    }
    if dbcache is not None:
        arms["cache-dit DBCache F1B0 + compile"] = lambda: diffusers_arm(comps, args, "dbcache", dbcache[0])
    pipes, rows = {}, {}
    for name, make in arms.items():
        pipe = make()
        g0, b0 = counters()
        first = call(pipe, args)
        g1, b1 = counters()
        second = call(pipe, args, seed=1)
        g2, b2 = counters()
        rows[name] = {"first_call_s": first, "graphs_first": g1 - g0, "graph_breaks_first": b1 - b0,
                      "graphs_second": g2 - g1, "graph_breaks_second": b2 - b1, "times": [second]}
        stats = getattr(pipe, "compile_stats", None)
        if stats is not None:
            rows[name]["recompiles_second"] = stats.recompiles
        pipes[name] = pipe
        print(f"{name}: first call {first:.1f} s, second {second:.2f} s", flush=True)
    names = list(arms)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rows[name]["times"].append(call(pipes[name], args, seed=2 + r))
    if args.profile:
        for name in ("EDiT folded, eager", "EDiT folded, compiled"):
            print(f"\nprofile of one call, {name} (top ops by self CPU time):")
            print(profile(pipes[name], args))
    base = "EDiT folded, compiled"
    table = []
    for name in names:
        times = rows[name]["times"]
        ratios = [t / b for t, b in zip(times, rows[base]["times"])]
        median = statistics.median(times)
        eager_median = statistics.median(rows["EDiT folded, eager"]["times"])
        table.append({"arm": name, "median_s": round(median, 3), "vs_edit_compiled": round(statistics.median(ratios), 3),
                      "compile_s": round(rows[name]["first_call_s"] - (median if "eager" in name else eager_median), 1),
                      **{k: v for k, v in rows[name].items() if k not in ("times", "first_call_s")},
                      "runs": len(times)})
    print(f"\nconfig {args.config}, {args.steps} steps, {len(skipped)} of {2 * args.steps} forwards reused")
    print(f"{'arm':34} {'median':>8} {'x EDiT compiled':>16} {'compile s':>10} {'graphs 1st/2nd':>15} "
          f"{'breaks 1st/2nd':>15}")
    for e in table:
        print(f"{e['arm']:34} {e['median_s']:8.3f} {e['vs_edit_compiled']:16.3f} {e['compile_s']:10.1f} "
              f"{e['graphs_first']:>7}/{e['graphs_second']:<7} {e['graph_breaks_first']:>7}/{e['graph_breaks_second']:<7}")
    Path(args.out).write_text(json.dumps({"config": args.config, "steps": args.steps, "threshold": args.threshold,
                                          "skipped": skipped, "dbcache_threshold_and_skipped": dbcache,
                                          "rows": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
