"""Plan search on the trained toy Wan: stack granularity against per-unit schedules (granularity 2)
at equal computed cells, with the calibration's cost and the search's time.

    python tests/bench_search.py [--prompts 4] [--steps 30] [--out assets/bench_search.json]

Calibration on captions neither held out nor the baselines' (`data.batch(777)`, seeds 1..); the
held-out captions and seeds of `bench_quality.py` measure PSNR against the uncached video at three
budgets (40%, 55% and 70% of the cells reused). The search time is the solve after calibration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    import edit
    from bench_quality import held_out_prompts, measure
    from edit.passes import Searched, SearchedUnits
    from edit.passes.search import solve, solve_units
    from edit.search import measure_edges
    from edit.toy import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "assets" / "bench_search.json"))
    args = parser.parse_args()
    base = edit.toy_pipeline()
    components = dict(base.components)

    def make(enable=None):
        def build():
            pipe = edit.EditWanPipeline(**components)
            pipe.set_progress_bar_config(disable=True)
            if enable is not None:
                enable(pipe)
            return pipe
        return build

    reference = make()()
    held = held_out_prompts(args.prompts + 1)[1:]
    calibration = [c.caption for c in data.batch(777, args.prompts, two=0)]
    size = dict(height=64, width=64, num_frames=17)
    steps = args.steps
    out = {"calibration_prompts": calibration, "held_out": held, "rows": [], "granularities": {}}
    costs = {}
    for granularity in ("stack", 2):
        start = time.perf_counter()
        costs[granularity] = measure_edges(make()(), calibration, num_inference_steps=steps,
                                           seeds=list(range(1, len(calibration) + 1)), granularity=granularity, **size)
        out["granularities"][str(granularity)] = {"units": costs[granularity].units,
                                                  "calibration_s": time.perf_counter() - start}
        print(f"calibration at granularity {granularity}: {time.perf_counter() - start:.1f} s", flush=True)
    times = []
    for _ in range(3):  # an uncached run's time: the unit the calibration's cost is given in
        start = time.perf_counter()
        reference("a red circle", num_inference_steps=steps, output_type="latent", **size)
        times.append(time.perf_counter() - start)
    uncached_s = statistics.median(times)
    for info in out["granularities"].values():
        info["in_uncached_runs"] = info["calibration_s"] / uncached_s
    for reused in (0.40, 0.55, 0.70):
        k = round((1 - reused) * steps)
        t0 = time.perf_counter()
        stack = solve(costs["stack"].combined(), steps, k)
        t_stack = time.perf_counter() - t0
        units = costs[2].units
        t0 = time.perf_counter()
        per_unit = solve_units(costs[2].by_unit(costs[2].combined()), steps, k * units)
        t_units = time.perf_counter() - t0
        row = {"reused": reused, "computed_steps": k,
               "stack": {**measure(make(lambda p, s=stack: p.enable_cache("none", passes=[Searched.of(s)])),
                                   held, steps, reference), "schedule": list(stack.computed), "solve_s": t_stack},
               "per_unit": {**measure(make(lambda p, s=per_unit: p.enable_cache(
                   "none", granularity=2, passes=[SearchedUnits.of(s)])), held, steps, reference),
                   "schedules": [list(s.computed) for s in per_unit], "solve_s": t_units,
                   "solve_s_per_unit": t_units / units}}
        out["rows"].append(row)
        print(f"{int(reused * 100)}% reused ({k} of {steps} steps): stack {row['stack']['psnr']:.2f} dB, "
              f"per unit {row['per_unit']['psnr']:.2f} dB; solve {t_stack * 1e3:.1f} ms / {t_units * 1e3:.1f} ms",
              flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
