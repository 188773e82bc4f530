"""The trained toy's semantic check, both figures: `python tests/bench_toy.py [--count 20]`.

For captions of the training grammar with new seeds, the fraction of generations whose dominant
foreground colour and direction of motion match the caption (`edit.toy.check`), for colour-shape
pairs seen in training and, separately, for the held-out pairs (`edit.toy.data.HELD_OUT`).
"""

from __future__ import annotations

import argparse
import json
import time

import edit
from edit.toy import check


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--folder", default=None, help="a trained toy pipeline folder (default: the shipped one)")
    args = parser.parse_args(argv)
    pipe = edit.toy_pipeline(folder=args.folder)
    pipe.set_progress_bar_config(disable=True)
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


if __name__ == "__main__":
    main()
