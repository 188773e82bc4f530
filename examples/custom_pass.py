"""A user pass: a FORA-style static schedule written with `set_cells`, run, drawn, and compared with
TeaCache at the same number of skipped cells (time, and PSNR of the final latents against the
uncached run).

    python examples/custom_pass.py [--steps 12] [--out-dir .]
"""

import argparse
import math
import time
from pathlib import Path

import torch

import edit
from edit.cache import calibrate_teacache
from edit.passes import set_cells

SIZE = dict(num_frames=9, height=32, width=48)


def fora(every: int):
    """Reuse every unit except the first on all but one of every `every` steps."""
    def fora_pass(graph):
        steps = [s for s in range(graph.spec.num_steps) if s % every]
        units = sorted({c.unit for c in graph.find(edit.graph.Cell, step=0)} - {0})
        return set_cells(graph, "reuse", steps=steps, units=units)
    return fora_pass


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = torch.mean((x.double() - ref.double()) ** 2).item()
    peak = ref.double().abs().max().item()
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def run(pipe, steps):
    start = time.perf_counter()
    out = pipe("a red fox running through snow", num_inference_steps=steps, output_type="latent",
               generator=torch.Generator().manual_seed(0), **SIZE).frames
    return out, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out-dir", default=".")
    args = parser.parse_args(argv)
    pipe = edit.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    run(pipe, 1)  # warm-up: the first call pays for allocations and thread pools
    plain, plain_s = run(pipe, args.steps)

    pipe.enable_cache("none", granularity=2, passes=[fora(3)])
    plan = pipe.compile(args.steps, 5.0, **SIZE)
    print(pipe.cache_pipeline)
    print(plan.summary())
    fora_out, fora_s = run(pipe, args.steps)
    skipped = pipe.cache.stats.skipped
    drawn = edit.graph.render(plan, Path(args.out_dir) / "fora_plan.svg", level="steps")

    # TeaCache at the threshold that skips the same number of cells (or the closest below it)
    fit = calibrate_teacache(pipe, ["a lighthouse in a storm"], num_inference_steps=args.steps, **SIZE)
    best = None
    for thresh in [x / 100 for x in range(1, 200)]:
        pipe.enable_cache("teacache", rel_l1_thresh=thresh, granularity=2, **fit.policy_kwargs())
        reused = sum(c.mode == "reuse" for c in pipe.compile(args.steps, 5.0, **SIZE).find(edit.graph.Cell))
        if reused > skipped:
            break
        best = thresh
    pipe.enable_cache("teacache", rel_l1_thresh=best, granularity=2, **fit.policy_kwargs())
    tea_out, tea_s = run(pipe, args.steps)
    print(f"{'':10} {'time':>7} {'cells reused':>13} {'PSNR vs uncached':>17}")
    print(f"{'uncached':10} {plain_s:>6.2f}s {0:>13} {'inf':>17}")
    print(f"{'FORA pass':10} {fora_s:>6.2f}s {skipped:>13} {psnr(fora_out, plain):>15.1f}dB")
    print(f"{'TeaCache':10} {tea_s:>6.2f}s {pipe.cache.stats.skipped:>13} {psnr(tea_out, plain):>15.1f}dB"
          f"  (rel_l1_thresh={best})")
    print(f"drew {drawn}")


if __name__ == "__main__":
    main()
