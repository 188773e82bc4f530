"""A cache policy of your own: registered by name, per (branch, unit) state, decided at run time.

This one reuses a unit while its input moved little since the last time it was computed (a
relative-L1 test on the unit's input, like First-Block-Cache but per unit), and never skips more
than `max_skips` steps in a row.

    python examples/custom_cache_policy.py [--threshold 0.05] [--steps 12]
"""

import argparse

import torch

import edit
from edit.cache import CachePolicy, register_policy, relative_l1


@register_policy("input_drift")
class InputDrift(CachePolicy):
    def __init__(self, *, rel_l1_thresh: float = 0.05, max_skips: int = 2):
        self.rel_l1_thresh, self.max_skips = rel_l1_thresh, max_skips

    def reset(self, state):
        state.user.update(reference=None, skipped=0)

    def should_compute(self, ctx):
        s = ctx.state.user
        if s["reference"] is not None and s["skipped"] < self.max_skips \
                and relative_l1(ctx.hidden, s["reference"]) < self.rel_l1_thresh:
            s["skipped"] += 1
            return False
        s["reference"], s["skipped"] = ctx.hidden, 0
        return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    pipe = edit.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache("input_drift", rel_l1_thresh=args.threshold, granularity=2)
    pipe("a red fox running through snow", num_frames=9, height=32, width=48, num_inference_steps=args.steps,
         output_type="latent", generator=torch.Generator().manual_seed(0))
    print(pipe.cache.stats)


if __name__ == "__main__":
    main()
