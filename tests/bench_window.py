"""Compile time against the reuse window's length (issue 19: it must grow linearly).

`python tests/bench_window.py [--windows 250 500 1000] [--repeats 3]`: a 6-step warm-started plan
(2 warm steps, units of 2 blocks, prefetch by a given cost model) compiled at generation W with a
window of the W generations before it; the median compile time per window, and the ratio per
doubling.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import edit
from edit.cache import DiskStore, GPUStore, TieredStore
from edit.passes.compiler import CostModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pipe = edit.tiny_pipeline()
    with tempfile.TemporaryDirectory() as folder:
        store = TieredStore([(GPUStore(), 4000), (DiskStore(folder), None)])
        pipe.enable_cache("warmstart_reuse", warm_steps=2, granularity=2, store=store, rel_l1_thresh=0.5,
                          coefficients=[1.0, 0.0], use_ret_steps=False, costs=CostModel(1e6, 0.001, 0.001))
        medians = {}
        for window in args.windows:
            pipe.cache.set_generation(window)
            pipe.cache.set_reuse_window(range(window))
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                plan = pipe.compile(6, 5.0, num_frames=9, height=32, width=48)
                times.append(time.perf_counter() - start)
            medians[window] = statistics.median(times)
            print(f"window {window}: {medians[window]:.3f} s ({len(plan)} nodes)")
        store.close()
    ws = sorted(medians)
    for a, b in zip(ws, ws[1:]):
        print(f"{a} -> {b}: x{medians[b] / medians[a]:.2f} for x{b / a:.1f} the window")


if __name__ == "__main__":
    main()
