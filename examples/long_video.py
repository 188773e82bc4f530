"""A long video, segment by segment, each warm-started from the residuals of the 4 segments before it
(`warmstart_reuse`), kept in a bounded GPU -> CPU -> disk store; the segments are stitched into one
video file.

    python examples/long_video.py [--segments 6] [--steps 10] [--out long.gif]
"""

import argparse
import tempfile

import numpy as np
import torch

import edit
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore

PROMPTS = ["a red fox trots through fresh snow", "the fox stops and sniffs the air", "the fox leaps over a log",
           "the fox runs along a frozen river", "the fox climbs a snowy bank", "the fox curls up under a pine"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="long.gif")
    args = parser.parse_args(argv)
    steps, num_segments = args.steps, args.segments
    pipe = edit.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    size = dict(num_frames=9, height=32, width=48)
    with tempfile.TemporaryDirectory() as folder:
        # small upper tiers, so the window's residuals live on the disk tier and prefetching has work to do
        tiered_store = TieredStore([(GPUStore(), 4 << 10), (CPUStore(), 8 << 10), (DiskStore(folder), None)])
        # the tiny model has random weights: an identity polynomial stands in for TeaCache's fitted one
        pipe.enable_cache(policy="warmstart_reuse", num_inference_steps=steps, store=tiered_store, warm_steps=2,
                          coefficients=[1.0, 0.0], use_ret_steps=False, rel_l1_thresh=0.3)
        cache = pipe.cache
        frames = []
        for g in range(num_segments):
            cache.set_generation(g)
            cache.set_reuse_window(range(max(0, g - 4), g))
            cache.reset(clear_store=False)
            video = pipe(prompt=PROMPTS[g % len(PROMPTS)], reset_cache=False, prefetch_reuse=True,
                         num_inference_steps=steps, generator=torch.Generator().manual_seed(g), **size).frames[0]
            frames.extend(video if g == 0 else video[1:])  # each segment's first frame repeats the last one's
            stats = cache.stats
            delta = stats.store_delta or {}
            print(f"segment {g}: window {list(cache.reuse_window)}, {stats.skipped} of "
                  f"{stats.skipped + stats.computed} cells reused, stall {stats.get_seconds * 1000:.1f} ms, "
                  f"prefetches {delta.get('prefetches', 0)}, hits {delta.get('prefetch_hits', 0)}")
        tiered_store.close()
    from PIL import Image
    images = [Image.fromarray((np.clip(f, 0, 1) * 255).round().astype("uint8")) for f in frames]
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=125, loop=0)
    print(f"wrote {args.out}: {len(images)} frames from {num_segments} segments")


if __name__ == "__main__":
    main()
