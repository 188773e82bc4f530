"""What `schedule_prefetch` hides: time the residual reads spend blocked, with and without prefetch.

A cached generation (FBCache, per-block units) over a tiered store whose GPU and CPU tiers hold one
residual each, so nearly every reuse reads its residual from disk. The store's `get` is wrapped to
measure its wall time (the part of a read the compute waits for); prefetch=None vs prefetch=k (every
read, speculative ones too) vs prefetch="auto" (the cost model: certain reads only — none in this
run-time plan), rotating, in one process. Prints medians and the median paired time ratio against
no prefetch, and writes JSON; the outputs must be bit-identical.

    python tests/bench_prefetch.py [--repeats 5] [--lead 1] [--steps 12] [--out bench_prefetch.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from edit import EditWanPipeline, tiny_components
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore

MID = dict(num_layers=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024, text_dim=64)
CALL = dict(prompt="a red fox running through snow", num_frames=33, height=128, width=128, guidance_scale=5.0,
            output_type="latent")


class TimedGets:
    """Wraps a store's `get` to add up its wall time."""

    def __init__(self, store):
        self.store, self.seconds, self.calls = store, 0.0, 0
        self._get = store.get
        store.get = self.get

    def get(self, key):
        start = time.perf_counter()
        try:
            return self._get(key)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def run(comps, folder, steps: int, lead: int | str | None, residual_bytes: int) -> dict:
    store = TieredStore([(GPUStore(), residual_bytes), (CPUStore(), residual_bytes), (DiskStore(folder), None)])
    timer = TimedGets(store)
    pipe = EditWanPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache("fbcache", rel_l1_thresh=0.2, granularity="per_block", num_inference_steps=steps, store=store,
                      prefetch=lead)
    start = time.perf_counter()
    out = pipe(**CALL, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).frames
    total = time.perf_counter() - start
    stats = pipe.cache.stats
    result = dict(total_s=total, get_ms=timer.seconds * 1000, gets=timer.calls, skipped=stats.skipped,
                  prefetches=stats.store["prefetches"], prefetch_hits=stats.store["prefetch_hits"],
                  late_waits=stats.store["late_waits"], disk_hits=stats.store["tiers"][2]["hits"], out=out)
    store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lead", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", default="bench_prefetch.json")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    comps = tiny_components(0, **MID)
    residual_bytes = 576 * MID["num_attention_heads"] * MID["attention_head_dim"] * 4  # tokens x dim x fp32
    settings = {"no prefetch": None, f"prefetch={args.lead}": args.lead, "prefetch=auto": "auto"}
    rows: dict[str, list[dict]] = {name: [] for name in settings}
    names = list(settings)
    with tempfile.TemporaryDirectory() as folder:
        run(comps, folder, args.steps, None, residual_bytes)  # warm-up
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate who goes first
                rows[name].append(run(comps, folder, args.steps, settings[name], residual_bytes))
    outs = [r.pop("out") for v in rows.values() for r in v]
    identical = all(torch.equal(outs[0], o) for o in outs)
    summary = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rows.items()}
    print(f"mid config, {args.steps} steps, FBCache per block, tiers GPU/CPU hold one residual each "
          f"({residual_bytes / 2**20:.2f} MB), the rest on disk; {torch.get_num_threads()} torch threads; "
          f"median of {args.repeats}")
    print(f"{'':<14}{'total s':>9}{'get ms':>9}{'gets':>6}{'disk hits':>10}{'prefetches':>11}{'pf hits':>8}"
          f"{'late':>6}")
    for name, m in summary.items():
        print(f"{name:<14}{m['total_s']:>9.3f}{m['get_ms']:>9.2f}{m['gets']:>6.0f}{m['disk_hits']:>10.0f}"
              f"{m['prefetches']:>11.0f}{m['prefetch_hits']:>8.0f}{m['late_waits']:>6.0f}")
    paired = {name: statistics.median(r["total_s"] / b["total_s"] for r, b in zip(runs, rows["no prefetch"]))
              for name, runs in rows.items() if name != "no prefetch"}
    print("median paired time ratio against no prefetch: "
          + ", ".join(f"{name} {ratio:.3f}" for name, ratio in paired.items()))
    print(f"outputs bit-identical: {identical}")
    with open(args.out, "w") as fh:
        json.dump(dict(steps=args.steps, lead=args.lead, repeats=args.repeats, residual_bytes=residual_bytes,
                       threads=torch.get_num_threads(),
                       median=summary, paired_ratio=paired, runs=rows, bit_identical=identical), fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
