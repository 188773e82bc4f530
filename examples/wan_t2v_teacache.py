"""TeaCache on Wan text-to-video: the folded skip schedule, the run's stats, and the cost.

On the trained toy (the default once its weights are in edit/toy/weights) `enable_cache("teacache")`
uses the coefficients fitted on the toy with `calibrate_teacache`; on the random-weight tiny model
(the default before) no published coefficients apply, so the script fits new ones first; with a real Wan2.1 checkpoint it uses the published `t2v-1.3B` ones.

    python examples/wan_t2v_teacache.py [--threshold 0.2] [--steps 30] [--model toy|tiny|PATH_OR_HUB_ID]
"""

import argparse
import time

import torch

import edit
from edit import EditWanPipeline
from edit.toy.model import default_model
from edit.cache import calibrate_teacache

SIZES = {"toy": dict(num_frames=17, height=64, width=64), "tiny": dict(num_frames=9, height=32, width=48)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model", default=default_model(),
                        help="toy, tiny, a diffusers Wan folder or a hub id (default: the toy once trained, else tiny)")
    args = parser.parse_args(argv)
    if args.model == "toy":
        pipe = edit.toy_pipeline()
    elif args.model == "tiny":
        pipe = edit.tiny_pipeline(seed=0)
    else:
        pipe = EditWanPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = SIZES.get(args.model, dict(num_frames=33, height=480, width=832))
    if args.model == "tiny":
        fit = calibrate_teacache(pipe, ["a lighthouse in a storm", "a cat at a piano"], num_inference_steps=args.steps,
                                 **size)
        kwargs = fit.policy_kwargs()
    elif args.model == "toy":
        kwargs = {}  # the toy's own fitted coefficients, picked from its architecture
    else:
        kwargs = dict(wan_variant="t2v-1.3B")
    call = dict(prompt="a small blue square moving up on a gradient background", num_inference_steps=args.steps,
                output_type="np", **size)

    start = time.perf_counter()
    plain = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    plain_s = time.perf_counter() - start
    pipe.enable_cache("teacache", rel_l1_thresh=args.threshold, **kwargs)
    print(pipe.compile(args.steps, 5.0, **size).summary())  # the folded schedule: C computes, S reuses
    start = time.perf_counter()
    cached = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    cached_s = time.perf_counter() - start
    print(pipe.cache.stats)
    from edit.metrics import compare

    quality = compare(cached[0], plain[0])
    print(f"uncached {plain_s:.2f} s, TeaCache {cached_s:.2f} s ({plain_s / cached_s:.2f}x); "
          f"PSNR {quality['psnr']:.1f} dB, SSIM {quality['ssim']:.3f} against the uncached video")


if __name__ == "__main__":
    main()
