"""TeaCache on Wan text-to-video: the folded skip schedule, the run's stats, and the cost.

On the embedded tiny model (random weights) TeaCache's published coefficients do not apply, so the
script first fits new ones with `calibrate_teacache`; with `--model` (a real Wan2.1 checkpoint) it
uses the published `t2v-1.3B` coefficients.

    python examples/wan_t2v_teacache.py [--threshold 0.2] [--steps 12] [--model PATH_OR_HUB_ID]
"""

import argparse
import time

import torch

import edit
from edit import EditWanPipeline
from edit.cache import calibrate_teacache


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    pipe = edit.tiny_pipeline(seed=0) if args.model is None else EditWanPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = dict(num_frames=9, height=32, width=48) if args.model is None else dict(num_frames=33, height=480, width=832)
    if args.model is None:
        fit = calibrate_teacache(pipe, ["a lighthouse in a storm", "a cat at a piano"], num_inference_steps=args.steps,
                                 **size)
        kwargs = fit.policy_kwargs()
    else:
        kwargs = dict(wan_variant="t2v-1.3B")
    call = dict(prompt="a red fox running through snow", num_inference_steps=args.steps, output_type="latent", **size)

    start = time.perf_counter()
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    plain_s = time.perf_counter() - start
    pipe.enable_cache("teacache", rel_l1_thresh=args.threshold, **kwargs)
    print(pipe.compile(args.steps, 5.0, **size).summary())  # the folded schedule: C computes, S reuses
    start = time.perf_counter()
    cached = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    cached_s = time.perf_counter() - start
    print(pipe.cache.stats)
    error = (cached - plain).abs().mean().item()
    print(f"uncached {plain_s:.2f} s, TeaCache {cached_s:.2f} s; mean |latent difference| {error:.4f}")


if __name__ == "__main__":
    main()
