"""Cache-store latency and disk throughput.

1. put+get round trip of one residual per store (GPUStore, CPUStore, DiskStore) for 1 MB and 64 MB,
   median of several runs (on CUDA the clock stops after a device synchronize).
2. DiskStore write and read throughput as a fraction of the raw sequential throughput of the same
   disk, measured in the same run, like with like: durable writes (write + fsync) against a store
   with ``fsync=True``, page-cache writes against ``fsync=False``, cold reads (both files evicted
   from the page cache with POSIX_FADV_DONTNEED after their fsync) and page-cache reads. The raw
   reads land in a fresh buffer each time, as the store's do. Target: >= 50% for 64 MB entries.

    python tests/bench_store_latency.py [--sizes-mb 1 64] [--repeats 7] [--dir DIR] [--out bench_store_latency.json]
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
from typing import Callable

import numpy as np
import torch

from edit.runtime.store import CPUStore, DiskStore, GPUStore

MB = 1 << 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def round_trip_ms(store, tensor: torch.Tensor, repeats: int) -> dict[str, float]:
    """put + get of one residual, synchronized, median/min over ``repeats`` (after one warm-up)."""
    samples = []
    for i in range(repeats + 1):
        _sync(tensor.device)
        start = time.perf_counter()
        store.put(("bench", i), tensor)
        out = store.get(("bench", i))
        _sync(tensor.device)
        elapsed = time.perf_counter() - start
        assert out is not None and out.shape == tensor.shape
        store.drop(("bench", i))
        if i:
            samples.append(elapsed)
    return {"median_ms": _median_ms(samples), "min_ms": min(samples) * 1000}


def _raw_write(path: str, data: memoryview, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = data
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _raw_read(path: str, nbytes: int) -> np.ndarray:
    out = np.empty(nbytes, dtype=np.uint8)  # a fresh buffer, as the store allocates a fresh tensor
    view = memoryview(out)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < nbytes:
            n = os.preadv(fd, [view[got:]], got)
            if n == 0:
                raise OSError("short read")
            got += n
    finally:
        os.close(fd)
    return out


def _evict(path: str | os.PathLike) -> None:
    """Drop a file's pages from the page cache (it was fsynced, so they are clean)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _alternate(raw: Callable[[], float], store: Callable[[], float], repeats: int) -> dict[str, float]:
    """Run raw and store timings alternately (so drifts hit both), return medians and the ratio."""
    raw_s, store_s = [], []
    for _ in range(repeats):
        raw_s.append(raw())
        store_s.append(store())
    raw_med, store_med = statistics.median(raw_s), statistics.median(store_s)
    return {"raw_ms": raw_med * 1000, "store_ms": store_med * 1000, "fraction": raw_med / store_med}


def disk_throughput(directory: Path, nbytes: int, repeats: int) -> dict[str, dict[str, float]]:
    """Store vs raw throughput fractions for one entry size, four like-with-like pairs."""
    tensor = torch.randn(nbytes // 4)
    data = memoryview(tensor.numpy()).cast("B")
    raw_path = str(directory / "raw.bin")
    results = {}
    for label, fsync in (("write_durable", True), ("write_page_cache", False)):
        with DiskStore(directory / f"store-{label}", device="cpu", fsync=fsync) as store:
            def raw() -> float:
                start = time.perf_counter()
                _raw_write(raw_path, data, fsync)
                elapsed = time.perf_counter() - start
                os.unlink(raw_path)
                return elapsed

            def put() -> float:
                start = time.perf_counter()
                assert store.put(("w",), tensor)
                elapsed = time.perf_counter() - start
                store.drop(("w",))
                return elapsed

            raw(), put()  # warm-up
            results[label] = _alternate(raw, put, repeats)
    with DiskStore(directory / "store-read", device="cpu", fsync=True) as store:
        store.put(("r",), tensor)
        _raw_write(raw_path, data, fsync=True)
        for label, cold in (("read_cold", True), ("read_page_cache", False)):
            def raw_read() -> float:
                if cold:
                    _evict(raw_path)
                start = time.perf_counter()
                _raw_read(raw_path, nbytes)
                return time.perf_counter() - start

            def get() -> float:
                if cold:
                    _evict(store.path(("r",)))
                start = time.perf_counter()
                assert store.get(("r",)) is not None
                return time.perf_counter() - start

            raw_read(), get()  # warm-up (and, for the page-cache pair, load the pages)
            results[label] = _alternate(raw_read, get, repeats)
        os.unlink(raw_path)
    for row in results.values():
        row["raw_gbps"] = nbytes / row["raw_ms"] / 1e6
        row["store_gbps"] = nbytes / row["store_ms"] / 1e6
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 64], help="residual sizes in MB")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--device", default=None, help="compute device (default: cuda if available, else cpu)")
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: system temp)")
    parser.add_argument("--out", default="bench_store_latency.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(tempfile.mkdtemp(prefix="edit-bench-store-", dir=args.dir))
    report = {"device": str(device), "torch": torch.__version__, "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "directory": str(work), "repeats": args.repeats,
              "round_trip": {}, "disk_throughput": {}}
    try:
        for size_mb in args.sizes_mb:
            nbytes = int(size_mb * MB) // 4 * 4
            tensor = torch.randn(nbytes // 4, device=device)
            label = f"{size_mb:g}MB"
            stores = {"gpu": GPUStore(device=device), "cpu": CPUStore(device=device),
                      "disk": DiskStore(work / "roundtrip", device=device)}
            report["round_trip"][label] = {name: round_trip_ms(store, tensor, args.repeats)
                                           for name, store in stores.items()}
            for store in stores.values():
                store.close()
            report["disk_throughput"][label] = disk_throughput(work, nbytes, args.repeats)
    finally:
        for path in sorted(work.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        work.rmdir()
    _print(report)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return report


def _print(report: dict) -> None:
    print(f"device {report['device']}  torch {report['torch']}  {report['cpu_count']} cpus  dir {report['directory']}")
    print("\nput+get round trip of one residual (median of %d, ms)" % report["repeats"])
    print(f"{'size':>8} {'GPUStore':>10} {'CPUStore':>10} {'DiskStore':>10}")
    for label, row in report["round_trip"].items():
        print(f"{label:>8} " + " ".join(f"{row[name]['median_ms']:>10.3f}" for name in ("gpu", "cpu", "disk")))
    print("\nDiskStore throughput vs raw sequential I/O on the same disk (median ms, GB/s, store/raw)")
    print(f"{'size':>8} {'pair':<18} {'raw ms':>9} {'store ms':>9} {'raw GB/s':>9} {'store GB/s':>10} {'fraction':>9}")
    for label, rows in report["disk_throughput"].items():
        for pair, row in rows.items():
            print(f"{label:>8} {pair:<18} {row['raw_ms']:>9.2f} {row['store_ms']:>9.2f} {row['raw_gbps']:>9.2f} "
                  f"{row['store_gbps']:>10.2f} {row['fraction']:>8.0%}")


if __name__ == "__main__":
    main()
