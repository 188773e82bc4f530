"""Long video, segment by segment, with cross-segment reuse: what prefetching hides.

N segments of one video (continual prompts), `warmstart_reuse` with a reuse window of 4 earlier
segments, three arms run back to back in one process (`--repeats` times, alternating order):

  (a) every residual in one unbounded device store (GPUStore): no swap-in at all;
  (b) bounded tiers (device <= one segment's kept residuals, host <= one more, disk the rest, so
      the window lives on the host and the disk), prefetch off;
  (c) the same tiers, prefetch on (the cost-model `schedule_prefetch`, entry reads issued before
      prompt encoding).

Two disk tiers: `cold` (each entry file is flushed and dropped from the page cache after it is
written, `posix_fadvise(DONTNEED)`, so reads come from the device as a real NVMe run's would) and
`latency` (reads also wait a fixed `--latency`, as a slow device). Steady state = segments from the
window size on. Reports seconds per segment, time blocked in `get` (the stall), and the fraction of
the swap-in stall that prefetch hid, (b - c) / (b - a), on stall time and on total time; plus the
median paired ratio c / b (prefetch never more than 2% slower). Writes JSON and a markdown table.

    python tests/bench_reuse.py [--segments 8] [--repeats 3] [--steps 10] [--latency 0.01]
    python tests/bench_reuse.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --height 480 --width 832 --frames 33 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_store_latency import _evict as evict_from_page_cache  # noqa: E402  (tests/ is on sys.path)

from edit import EditWanPipeline, tiny_components
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore

PROMPTS = ["a red fox trots through fresh snow", "the fox stops and sniffs the air", "the fox leaps over a log",
           "the fox runs along a frozen river", "the fox climbs a snowy bank", "the fox looks back at the camera",
           "the fox curls up under a pine", "snow falls on the sleeping fox"]
SMALL = dict(num_layers=8, num_attention_heads=4, attention_head_dim=32, ffn_dim=512, text_dim=64)


class ColdDisk(DiskStore):
    """Each entry file is flushed and dropped from the page cache once written: reads hit the disk."""

    def put(self, key, tensor) -> bool:
        stored = super().put(key, tensor)
        path = self.path(key) if stored else None
        if path is not None and hasattr(os, "posix_fadvise"):
            evict_from_page_cache(path)
        return stored


class SlowDisk(ColdDisk):
    """A cold disk whose every read also waits `latency` seconds (on the I/O threads when prefetched)."""

    latency = 0.01

    def _load(self, record, stage):
        time.sleep(self.latency)
        return super()._load(record, stage)


def make_store(arm: str, disk: str, folder: Path, kept_bytes: int):
    if arm == "a":
        return GPUStore()
    tier = ColdDisk if disk == "cold" else SlowDisk
    # a warm residual is read once per segment: promoting it would only push others down (writes)
    return TieredStore([(GPUStore(), kept_bytes), (CPUStore(), kept_bytes), (tier(folder, max_workers=8), None)],
                       promote=False)


def run_arm(pipe, arm: str, disk: str, args, size: dict, folder: Path, kept_bytes: int) -> list[dict]:
    store = make_store(arm, disk, folder, kept_bytes)
    pipe.enable_cache("warmstart_reuse", num_inference_steps=args.steps, store=store, warm_steps=args.warm_steps,
                      **args.policy)
    cache = pipe.cache
    rows = []
    for g in range(args.segments):
        cache.set_generation(g)
        cache.set_reuse_window(range(max(0, g - args.window), g))
        cache.reset(clear_store=False)
        start = time.perf_counter()
        pipe(prompt=PROMPTS[g % len(PROMPTS)], num_inference_steps=args.steps, output_type="latent",
             generator=torch.Generator().manual_seed(g), reset_cache=False, prefetch_reuse=arm == "c", **size)
        seconds = time.perf_counter() - start
        stats = cache.stats
        delta = stats.store_delta or {}
        rows.append({"segment": g, "seconds": seconds, "stall": stats.get_seconds, "gets": stats.gets,
                     "skipped": stats.skipped, "computed": stats.computed, "recomputed": stats.recomputed,
                     "prefetches": delta.get("prefetches", 0), "prefetch_hits": delta.get("prefetch_hits", 0),
                     "late_waits": delta.get("late_waits", 0), "late_wait_seconds": delta.get("late_wait_seconds", 0),
                     "bytes_in_per_tier": [t.get("bytes_in", 0) for t in delta.get("tiers", [])],
                     "trace": {f"{b}:{u}": t for (b, u), t in stats.trace.items()}})
    store.close() if hasattr(store, "close") else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--warm-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.01, help="extra seconds per read of the latency disk")
    parser.add_argument("--model", default=None, help="a diffusers Wan folder or hub id (default: the embedded model)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--out", default="bench_reuse")
    args = parser.parse_args()
    SlowDisk.latency = args.latency
    if args.model is None:
        pipe = EditWanPipeline(**tiny_components(0, **SMALL))
        # the embedded random-weight model: TeaCache with an identity polynomial on `e`
        args.policy = dict(coefficients=[1.0, 0.0], use_ret_steps=False, rel_l1_thresh=0.3)
    else:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        pipe = EditWanPipeline.from_pretrained(args.model, dtype=dtype, device="cuda" if torch.cuda.is_available() else None)
        args.policy = dict(wan_variant="t2v-1.3B", rel_l1_thresh=0.2)
    pipe.set_progress_bar_config(disable=True)
    size = dict(height=args.height, width=args.width, num_frames=args.frames)
    plan = pipe.compile(args.steps, 5.0, **size)
    residual = plan.fingerprint["residual_shape"]
    per_residual = residual[0] * residual[1] * residual[2] * torch.finfo(pipe.transformer.dtype).bits // 8
    units = 1  # stack granularity
    kept_bytes = args.warm_steps * 2 * units * per_residual + 2 * units * per_residual  # one segment's keys
    pipe(prompt=PROMPTS[0], num_inference_steps=2, output_type="latent", **size)  # warm-up

    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "residual_bytes": per_residual,
                     "tier_budget_bytes": kept_bytes, "scenarios": {}}
    for disk in ("cold", "latency"):
        runs: dict[str, list[list[dict]]] = {"a": [], "b": [], "c": []}
        for rep in range(args.repeats):
            order = ["a", "b", "c"] if rep % 2 == 0 else ["c", "b", "a"]
            for arm in order:
                with tempfile.TemporaryDirectory() as folder:
                    runs[arm].append(run_arm(pipe, arm, disk, args, size, Path(folder), kept_bytes))
        steady = {arm: [row for rows in reps for row in rows[args.window:]] for arm, reps in runs.items()}
        med = {arm: {k: statistics.median(r[k] for r in rows) for k in ("seconds", "stall")}
               for arm, rows in steady.items()}
        paired = [statistics.median(c["seconds"] for c in rc[args.window:]) /
                  statistics.median(b["seconds"] for b in rb[args.window:]) for rb, rc in zip(runs["b"], runs["c"])]

        def hidden(key: str) -> float | None:
            gap = med["b"][key] - med["a"][key]
            return None if gap <= 0 else (med["b"][key] - med["c"][key]) / gap
        traces_equal = all(rb_row["trace"] == rc_row["trace"] for rb, rc in zip(runs["b"], runs["c"])
                           for rb_row, rc_row in zip(rb, rc))
        c_rows = steady["c"]
        results["scenarios"][disk] = {
            "median_seconds_per_segment": {k: round(v["seconds"], 4) for k, v in med.items()},
            "median_stall_seconds": {k: round(v["stall"], 4) for k, v in med.items()},
            "hidden_stall_fraction": hidden("stall"), "hidden_total_fraction": hidden("seconds"),
            "median_paired_ratio_c_over_b": round(statistics.median(paired), 4),
            "prefetches_per_segment": statistics.median(r["prefetches"] for r in c_rows),
            "prefetch_hits_per_segment": statistics.median(r["prefetch_hits"] for r in c_rows),
            "late_waits_per_segment": statistics.median(r["late_waits"] for r in c_rows),
            "traces_equal_b_c": traces_equal, "runs": runs,
        }
        s = results["scenarios"][disk]
        print(f"[{disk}] s/segment a {med['a']['seconds']:.3f}  b {med['b']['seconds']:.3f}  c {med['c']['seconds']:.3f}; "
              f"stall a {med['a']['stall'] * 1000:.1f} ms  b {med['b']['stall'] * 1000:.1f} ms  "
              f"c {med['c']['stall'] * 1000:.1f} ms; hidden: stall {s['hidden_stall_fraction']}, total "
              f"{s['hidden_total_fraction']}; c/b {s['median_paired_ratio_c_over_b']}; traces equal {traces_equal}")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    lines = ["| disk | arm | s / segment | stall (time in `get`) |", "|---|---|---|---|"]
    names = {"a": "(a) unbounded device store", "b": "(b) tiers, prefetch off", "c": "(c) tiers, prefetch on"}
    for disk, s in results["scenarios"].items():
        for arm in "abc":
            lines.append(f"| {disk} | {names[arm]} | {s['median_seconds_per_segment'][arm]:.3f} | "
                         f"{s['median_stall_seconds'][arm] * 1000:.1f} ms |")
    lines.append("")
    lines.append("| disk | stall hidden (b-c)/(b-a) | total hidden | paired c/b | prefetches / hits / late waits per segment |")
    lines.append("|---|---|---|---|---|")
    for disk, s in results["scenarios"].items():
        def pct(x):
            return "n/a" if x is None else f"{x:.0%}"
        lines.append(f"| {disk} | {pct(s['hidden_stall_fraction'])} | {pct(s['hidden_total_fraction'])} | "
                     f"{s['median_paired_ratio_c_over_b']:.3f} | {s['prefetches_per_segment']:g} / "
                     f"{s['prefetch_hits_per_segment']:g} / {s['late_waits_per_segment']:g} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
