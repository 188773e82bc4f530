"""Draw a plan at three levels of detail, and a run's decisions on a run-time plan.

    python examples/render_plan.py [--out-dir .] [--format svg]
"""

import argparse
from pathlib import Path

import torch

import edit
from edit.graph import render


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=".")
    parser.add_argument("--format", default="svg", choices=["svg", "png", "pdf", "dot"])
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    size = dict(num_frames=9, height=32, width=48)
    pipe = edit.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2)
    plan = pipe.compile(8, 5.0, **size)
    for level, steps in (("steps", None), ("units", range(3)), ("nodes", range(2))):
        print("wrote", render(plan, out / f"plan_{level}.{args.format}", level=level, steps=steps))
    pipe("a red fox running through snow", num_inference_steps=8, output_type="latent",
         generator=torch.Generator().manual_seed(0), **size)
    try:  # with the run's decisions, where the renderer takes a trace
        print("wrote", render(plan, out / f"plan_trace.{args.format}", level="units",
                              trace=pipe.cache.stats.cell_states()))
    except TypeError:
        print("(this renderer draws no traces)")


if __name__ == "__main__":
    main()
