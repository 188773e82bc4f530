"""Overhead of the EDiT runtime with no cache: diffusers WanPipeline vs EditWanPipeline.

Same components, alternating A/B runs in one process on a mid-size config (one transformer
forward >= 50 ms on a 2-core CPU). Prints the medians and writes JSON. Target: ratio <= 1.02.

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
    pipes = {"diffusers": WanPipeline(**comps), "edit": EditWanPipeline(**comps)}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        timed(pipe, 1)  # warm-up: allocator, thread pools, first-call caches
    fwd = forward_ms(comps["transformer"])
    times: dict[str, list[float]] = {name: [] for name in pipes}
    ratios = []
    outputs = {}
    for i in range(args.pairs):
        order = list(pipes) if i % 2 == 0 else list(pipes)[::-1]  # alternate who goes first
        pair = {}
        for name in order:
            pair[name], outputs[name] = timed(pipes[name], args.steps)
            times[name].append(pair[name])
        ratios.append(pair["edit"] / pair["diffusers"])
    identical = torch.equal(outputs["edit"], outputs["diffusers"])
    result = {
        "config": MID, "call": {**CALL, "num_inference_steps": args.steps}, "pairs": args.pairs,
        "forward_ms": round(fwd, 2),
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_of_medians": round(statistics.median(times["edit"]) / statistics.median(times["diffusers"]), 4),
        "median_pair_ratio": round(statistics.median(ratios), 4),
        "pair_ratios": [round(r, 4) for r in ratios],
        "bit_identical": identical,
        "threads": torch.get_num_threads(),
    }
    print(f"one transformer forward: {fwd:.1f} ms (mid config {MID})")
    print(f"{'pipeline':<10} {'median s':>9}   ({args.pairs} alternating runs, {args.steps} steps, CFG)")
    for name, value in result["median_s"].items():
        print(f"{name:<10} {value:>9.3f}")
    print(f"edit/diffusers: ratio of medians {result['ratio_of_medians']:.4f}, "
          f"median pair ratio {result['median_pair_ratio']:.4f} (target <= 1.02); bit-identical: {identical}")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
