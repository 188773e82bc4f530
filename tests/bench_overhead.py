"""Overhead of the EDiT runtime with no cache: diffusers WanPipeline vs EditWanPipeline.

Same components, runs rotating in one process on a mid-size config (one transformer forward >= 50 ms
on a 2-core CPU). Arms: diffusers; EDiT's plain plan (target ratio <= 1.02); EDiT with a per-block
cache plan whose every cell computes (`enable_cache("none", granularity="per_block")`: each of the
blocks is a cell that decides, runs and stores its residual; target <= 1.03); and Wan2.2's two
experts (`transformer_2` of other weights, `boundary_ratio=0.875`), EDiT against diffusers on the
same two-expert components (target <= 1.02). Prints the medians and writes JSON.

    python tests/bench_overhead.py [--pairs 7] [--steps 4] [--out bench_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from diffusers import WanPipeline

from edit import EditWanPipeline, tiny_components

MID = dict(num_layers=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024, text_dim=64)
CALL = dict(prompt="a red fox running through snow", num_frames=33, height=128, width=128,
            guidance_scale=5.0, output_type="latent")


def forward_ms(transformer, repeats: int = 5) -> float:
    x = torch.randn(1, 16, 9, 16, 16)
    t, text = torch.tensor([500.0]), torch.randn(1, 512, MID["text_dim"])
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            transformer(x, t, text, return_dict=False)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def timed(pipe, steps: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = pipe(**CALL, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).frames
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="bench_overhead.json")
    args = parser.parse_args()

    comps = tiny_components(0, **MID)
    two = dict(comps, transformer_2=tiny_components(1, **MID)["transformer"], boundary_ratio=0.875)
    pipes = {"diffusers": WanPipeline(**comps), "edit": EditWanPipeline(**comps),
             "edit_per_block": EditWanPipeline(**comps),
             "diffusers_2x": WanPipeline(**two), "edit_2x": EditWanPipeline(**two)}
    against = {"edit": "diffusers", "edit_per_block": "diffusers", "edit_2x": "diffusers_2x"}
    pipes["edit_per_block"].enable_cache("none", granularity="per_block")
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        timed(pipe, 1)  # warm-up: allocator, thread pools, first-call caches
    fwd = forward_ms(comps["transformer"])
    times: dict[str, list[float]] = {name: [] for name in pipes}
    ratios: dict[str, list[float]] = {name: [] for name in against}
    outputs = {}
    names = list(pipes)
    for i in range(args.pairs):
        order = names[i % len(names):] + names[:i % len(names)]  # rotate who goes first
        pair = {}
        for name in order:
            pair[name], outputs[name] = timed(pipes[name], args.steps)
            times[name].append(pair[name])
        for name in ratios:
            ratios[name].append(pair[name] / pair[against[name]])
    identical = {name: torch.equal(outputs[name], outputs[against[name]]) for name in ratios}
    result = {
        "config": MID, "call": {**CALL, "num_inference_steps": args.steps}, "pairs": args.pairs,
        "forward_ms": round(fwd, 2),
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_of_medians": {k: round(statistics.median(times[k]) / statistics.median(times[against[k]]), 4)
                             for k in ratios},
        "median_pair_ratio": {k: round(statistics.median(v), 4) for k, v in ratios.items()},
        "pair_ratios": {k: [round(r, 4) for r in v] for k, v in ratios.items()},
        "bit_identical": identical,
        "threads": torch.get_num_threads(),
    }
    print(f"one transformer forward: {fwd:.1f} ms (mid config {MID})")
    print(f"{'pipeline':<14} {'median s':>9}   ({args.pairs} alternating runs, {args.steps} steps, CFG)")
    for name, value in result["median_s"].items():
        print(f"{name:<14} {value:>9.3f}")
    for name, target in (("edit", 1.02), ("edit_per_block", 1.03), ("edit_2x", 1.02)):
        print(f"{name}/{against[name]}: ratio of medians {result['ratio_of_medians'][name]:.4f}, median pair ratio "
              f"{result['median_pair_ratio'][name]:.4f} (target <= {target}); bit-identical: {identical[name]}")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
