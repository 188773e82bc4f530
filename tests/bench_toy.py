"""The trained toy's semantic check, both figures: `python tests/bench_toy.py [--count 20] [--picture PNG]`.

For captions of the training grammar with new seeds, the fraction of generations whose dominant
foreground colour and direction of motion match the caption (`edit.toy.check`), for colour-shape
pairs seen in training and, separately, for the held-out pairs (`edit.toy.data.HELD_OUT`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import edit
from edit.toy import check


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--folder", default=None, help="a trained toy pipeline folder (default: the shipped one)")
    parser.add_argument("--picture", default=None, metavar="PNG",
                        help="also draw every fourth frame of a few generations, a row each, with the caption")
    args = parser.parse_args(argv)
    pipe = edit.toy_pipeline(folder=args.folder)
    pipe.set_progress_bar_config(disable=True)
    if args.picture:
        picture(pipe, args.picture, steps=30)
    out = {}
    for name, held in (("seen pairs", False), ("held-out pairs", True)):
        clips = check.captions(held_out=held, count=args.count, seed=1234 if not held else 4321)
        start = time.perf_counter()
        fraction, hits = check.score(pipe, clips, seed=99, steps=args.steps)
        out[name] = dict(fraction=fraction, seconds=round(time.perf_counter() - start, 1),
                         missed=[c.caption for c, h in zip(clips, hits) if not h])
        print(f"{name}: {sum(hits)}/{len(hits)} match their caption ({fraction:.0%}) in {out[name]['seconds']} s")
    print(json.dumps(out))
    return out


PICTURE = ("a big red circle moving right on a dark background",
           "a small blue square moving up on a gradient background",
           "a big yellow triangle moving diagonally on a dark background",
           "a big white circle bouncing on a gradient background",
           "a small green square moving left on a dark background",
           "a big green triangle moving down on a dark background")  # green triangle: a held-out pair


def picture(pipe, path: str, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = pipe(list(PICTURE), num_inference_steps=steps, guidance_scale=5.0, num_frames=17, height=64, width=64,
                  generator=torch.Generator().manual_seed(5), output_type="np").frames
    shown = range(0, 17, 4)
    fig, axes = plt.subplots(len(PICTURE), len(shown), figsize=(1.3 * len(shown) + 3.6, 1.3 * len(PICTURE)))
    for row, (caption, video) in enumerate(zip(PICTURE, frames)):
        for col, f in enumerate(shown):
            ax = axes[row][col]
            ax.imshow(np.clip(video[f], 0, 1), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {f}", fontsize=8)
        axes[row][-1].text(1.08, 0.5, caption.replace(" on a", "\non a"), transform=axes[row][-1].transAxes,
                           fontsize=8, va="center")
    fig.suptitle(f"the trained toy Wan, {steps} steps, CFG 5, seed 5 (last row: a colour-shape pair never trained)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
