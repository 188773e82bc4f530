"""Save a plan, edit one cell in the JSON by hand, load it back (verified) and run it.

    python examples/edit_plan_json.py [--out-dir .]
"""

import argparse
import json
from pathlib import Path

import torch

import edit
from edit.graph import Plan


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=".")
    args = parser.parse_args(argv)
    size = dict(num_frames=9, height=32, width=48)
    pipe = edit.tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache("none", granularity=2)          # every cell computes: a plan to edit
    path = pipe.compile(6, 5.0, **size).save(Path(args.out_dir) / "plan.json")
    print(f"saved {path}")

    data = json.loads(path.read_text())               # flip one cell to reuse its previous step
    cell = next(node for node in data["nodes"] if node["name"] == "s3.cond.u1")
    cell["mode"] = "reuse"
    path.write_text(json.dumps(data, indent=1))

    plan = Plan.load(path)                            # verified on load
    print(plan.summary())
    pipe("a red fox running through snow", num_inference_steps=6, output_type="latent", plan=plan,
         generator=torch.Generator().manual_seed(0), **size)
    print(pipe.cache.stats)


if __name__ == "__main__":
    main()
