"""The seed tiered long run: fresh cache every generation flowing through GPU -> CPU -> disk budgets.

Each generation gets a fresh generation id and puts a fixed amount of new residuals, keyed
(generation, step, branch, unit), into a TieredStore; nothing is reused, so the tiers fill top
down, then the last tier starts evicting and the total stays flat. Per generation it prints the MB
held in each tier, the total, and the time spent moving entries between tiers; then the put+get
round trip of one residual on each tier's store on its own.

The seed ran 192 MB per generation against GPU <= 384 MB, CPU <= 768 MB, NVMe <= 2304 MB for 30
generations (CPU engages at generation 3, disk at 7, eviction from 19, flat at 3456 MB after). The
default here is that run scaled by 1/16 so it takes well under a minute on a 2-core CPU; ``--scale 1``
(or explicit sizes) gives the seed's sizes.

    python tests/bench_tiered_longrun.py [--scale 0.0625] [--generations 30] [--out bench_tiered_longrun.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore

MB = 1 << 20
SEED = {"mb_per_gen": 192.0, "gpu_mb": 384.0, "cpu_mb": 768.0, "disk_mb": 2304.0}
STEPS, BRANCHES, UNITS = 6, ("cond", "uncond"), 1  # 12 residuals per generation: 1 MB each scaled, 16 MB at seed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _residual(nbytes: int, fill: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((nbytes // dtype.itemsize,), fill, dtype=dtype, device=device)


def long_run(store: TieredStore, generations: int, entry_bytes: int, dtype: torch.dtype,
             device: torch.device) -> list[dict]:
    """Put one generation of fresh residuals after another; one row of tier usage per generation."""
    rows = []
    mb = [float(MB)] * len(store.stores)
    for gen in range(1, generations + 1):
        before = store.stats
        residuals = [((gen, step, branch, unit), _residual(entry_bytes, float(gen), dtype, device))
                     for step in range(STEPS) for branch in BRANCHES for unit in range(UNITS)]
        _sync(device)
        start = time.perf_counter()
        for key, value in residuals:
            store.put(key, value)
        _sync(device)
        put_s = time.perf_counter() - start
        after = store.stats
        rows.append({
            "generation": gen,
            "tier_mb": [b / m for b, m in zip(store.tier_bytes, mb)],
            "total_mb": store.nbytes / MB,
            "move_ms": (after.move_seconds - before.move_seconds) * 1000,
            "put_ms": put_s * 1000,
            "spills": after.spills - before.spills,
            "evictions": after.evictions - before.evictions,
        })
    return rows


def milestones(rows: list[dict]) -> dict[str, int | float | None]:
    """When each lower tier first holds data, when eviction starts, and the total it settles at."""
    def first(predicate):
        return next((row["generation"] for row in rows if predicate(row)), None)

    return {"cpu_engages": first(lambda r: r["tier_mb"][1] > 0),
            "disk_engages": first(lambda r: r["tier_mb"][2] > 0),
            "eviction_from": first(lambda r: r["evictions"] > 0),
            "final_total_mb": rows[-1]["total_mb"] if rows else None}


def round_trips(device: torch.device, entry_bytes: int, dtype: torch.dtype, directory: Path,
                repeats: int) -> dict[str, float]:
    """Median put+get of one residual on each kind of tier store, alone."""
    value = _residual(entry_bytes, 1.0, dtype, device)
    stores = {"gpu": GPUStore(device=device), "cpu": CPUStore(device=device),
              "disk": DiskStore(directory / "roundtrip", device=device)}
    result = {}
    for name, store in stores.items():
        samples = []
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            store.put(("rt", i), value)
            out = store.get(("rt", i))
            _sync(device)
            if i:
                samples.append(time.perf_counter() - start)
            assert out is not None
            store.drop(("rt", i))
        store.close()
        result[name] = statistics.median(samples) * 1000
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1 / 16, help="multiplier on the seed sizes (1 = seed)")
    parser.add_argument("--mb-per-gen", type=float, help="fresh cache per generation in MB (overrides --scale)")
    parser.add_argument("--gpu-mb", type=float, help="tier 0 (device) budget in MB")
    parser.add_argument("--cpu-mb", type=float, help="tier 1 (pinned host) budget in MB")
    parser.add_argument("--disk-mb", type=float, help="tier 2 (disk) budget in MB")
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    parser.add_argument("--dir", default=None, help="where the disk tier lives (default: system temp)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per round-trip latency (median)")
    parser.add_argument("--out", default="bench_tiered_longrun.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.generations < 1 or args.repeats < 1:
        parser.error("--scale must be > 0, --generations and --repeats >= 1")
    sizes = {name: getattr(args, name) if getattr(args, name) is not None else seed * args.scale
             for name, seed in SEED.items()}
    if min(sizes.values()) <= 0:
        parser.error("sizes must be > 0 MB")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    per_gen = STEPS * len(BRANCHES) * UNITS
    entry_bytes = int(sizes["mb_per_gen"] * MB) // per_gen // 64 * 64
    work = Path(tempfile.mkdtemp(prefix="edit-bench-longrun-", dir=args.dir))
    store = TieredStore([(GPUStore(device=device), int(sizes["gpu_mb"] * MB)),
                         (CPUStore(device=device), int(sizes["cpu_mb"] * MB)),
                         (DiskStore(work / "disk", device=device), int(sizes["disk_mb"] * MB))])
    try:
        rows = long_run(store, args.generations, entry_bytes, dtype, device)
        stats = store.stats.as_dict()
        store.close()
        leftover = len(os.listdir(work / "disk"))
        latency = round_trips(device, entry_bytes, dtype, work, args.repeats)
    finally:
        store.close()
        for path in sorted(work.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        work.rmdir()
    report = {"device": str(device), "torch": torch.__version__, "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "dtype": args.dtype, "scale": args.scale,
              "config": {**sizes, "generations": args.generations, "entries_per_gen": per_gen,
                         "entry_mb": entry_bytes / MB},
              "generations": rows, "milestones": milestones(rows), "final_stats": stats,
              "files_left_after_close": leftover, "round_trip_ms": latency}
    _print(report)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return report


def _print(report: dict) -> None:
    cfg = report["config"]
    print(f"device {report['device']}  {cfg['mb_per_gen']:g} MB/generation in {cfg['entries_per_gen']} residuals of "
          f"{cfg['entry_mb']:.3g} MB ({report['dtype']}); budgets GPU {cfg['gpu_mb']:g} / CPU {cfg['cpu_mb']:g} / "
          f"disk {cfg['disk_mb']:g} MB")
    print(f"\n{'gen':>4} {'GPU MB':>8} {'CPU MB':>8} {'disk MB':>8} {'total MB':>9} {'move ms':>8} {'put ms':>8} "
          f"{'spills':>6} {'evict':>6}")
    for row in report["generations"]:
        gpu, cpu, disk = row["tier_mb"]
        print(f"{row['generation']:>4} {gpu:>8.1f} {cpu:>8.1f} {disk:>8.1f} {row['total_mb']:>9.1f} "
              f"{row['move_ms']:>8.2f} {row['put_ms']:>8.2f} {row['spills']:>6} {row['evictions']:>6}")
    m = report["milestones"]
    print(f"\nCPU engages at generation {m['cpu_engages']}, disk at {m['disk_engages']}, eviction from "
          f"{m['eviction_from']}, total flat at {m['final_total_mb']:g} MB; files left after close: "
          f"{report['files_left_after_close']}")
    rt = report["round_trip_ms"]
    print(f"put+get of one {cfg['entry_mb']:.3g} MB residual (median ms): GPU {rt['gpu']:.3f}  CPU {rt['cpu']:.3f}  "
          f"disk {rt['disk']:.3f}")


if __name__ == "__main__":
    main()
