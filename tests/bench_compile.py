"""Compile time of a large plan: lower + the default pipeline + verify + compile_program.

50 steps x 2 CFG branches x 40 blocks, per-block cells (4,000 cells), on the embedded model's
config (40 layers, tiny width: compiling does not depend on the width), for
- TeaCache folded into a static schedule, with prefetches scheduled (lead 2);
- FBCache decided at run time.
Also the time of a `find` / cell query at that size (target < 1 ms), and of `plan.save` / `Plan.load`
(versioned JSON, load includes verify; target < 0.5 s each, file size reported). Target: < 0.5 s per
plan.
Runs in one process, median of --repeats; writes JSON.

    python tests/bench_compile.py [--repeats 5] [--out bench_compile.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edit import EditWanPipeline, tiny_components
from edit import diffusers_face as face
from edit.passes.compiler import compile_plan
from edit.graph import Cell, Plan, lower, verify
from edit.runtime import compile_program

STEPS, BLOCKS = 50, 40
SIZE = dict(height=32, width=48, num_frames=9)


def compile_once(pipe: EditWanPipeline) -> tuple[dict[str, float], object]:
    """The phases of `pipe`'s own compile path, timed separately."""
    shape = face.latent_shape(pipe, 1, SIZE["num_frames"], SIZE["height"], SIZE["width"])
    spec = pipe.run_spec(STEPS, 5.0, latent_shape=shape)
    inputs = pipe.plan_inputs(spec, shape, pipe._timesteps(STEPS, "cpu"))
    t0 = time.perf_counter()
    lower(spec)  # timed alone; build_plan lowers again as part of its pipeline run
    t1 = time.perf_counter()
    plan, _ = compile_plan(*inputs[:4], extra=inputs[4])
    t2 = time.perf_counter()
    program = compile_program(plan, check=False)
    t3 = time.perf_counter()
    assert len(program) == len(plan)
    # total = what a call pays: build_plan (lower + passes + verify) + compile_program
    return {"lower": t1 - t0, "build_plan": t2 - t1, "compile_program": t3 - t2, "total": t3 - t1}, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench_compile.json")
    args = parser.parse_args()
    pipe = EditWanPipeline(**tiny_components(0, num_layers=BLOCKS))
    arms = {
        "teacache_folded_prefetch": dict(policy="teacache", rel_l1_thresh=0.2, granularity="per_block", prefetch=2),
        "fbcache_runtime": dict(policy="fbcache", rel_l1_thresh=0.1, granularity="per_block"),
    }
    result = {"steps": STEPS, "blocks": BLOCKS, "branches": 2, "repeats": args.repeats, "arms": {}}
    with torch.no_grad():
        for name, settings in arms.items():
            pipe.enable_cache(**settings)
            runs, plan = [], None
            for _ in range(args.repeats):
                phases, plan = compile_once(pipe)
                runs.append(phases)
            verify(plan)
            query = []
            for i in range(200):
                start = time.perf_counter()
                found = plan.find(Cell, step=i % STEPS, branch="cond", unit=i % 39)
                query.append(time.perf_counter() - start)
                assert len(found) == 1
            saves, loads = [], []
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "plan.json"
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    plan.save(path)
                    saves.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    loaded = Plan.load(path)
                    loads.append(time.perf_counter() - start)
                size = path.stat().st_size
            assert len(loaded) == len(plan)
            result["arms"][name] = {
                "nodes": len(plan), "edges": plan.nx.number_of_edges(), "pipeline": plan.pipeline,
                "median_s": {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]},
                "passes_ms": {r.name: round(r.seconds * 1000, 1) for r in pipe.pass_records},
                "find_ms": round(statistics.median(query) * 1000, 4),
                "save_s": round(statistics.median(saves), 4), "load_s": round(statistics.median(loads), 4),
                "file_bytes": size,
            }
            arm = result["arms"][name]
            print(f"{name}: {arm['nodes']} nodes; total {arm['median_s']['total']:.3f} s "
                  f"(build_plan {arm['median_s']['build_plan']:.3f} of which lower {arm['median_s']['lower']:.3f}, "
                  f"compile_program {arm['median_s']['compile_program']:.3f}); find {arm['find_ms']:.3f} ms; "
                  f"save {arm['save_s']:.3f} s, load {arm['load_s']:.3f} s, {size / 1e6:.1f} MB")
            print("   ", ", ".join(f"{k} {v} ms" for k, v in arm["passes_ms"].items()))
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
