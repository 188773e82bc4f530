"""`measure_transfer`: how fast a store's slowest tier returns a residual, for the prefetch cost model."""

from __future__ import annotations

import time
from typing import Any

import torch

from edit.runtime.store.gpu import GPUStore


def slowest_tier(store: Any) -> Any | None:
    """The store a read may have to come from at worst: a `TieredStore`'s last tier, or the store
    itself; None when that is device memory (`GPUStore`: nothing to hide)."""
    tiers = getattr(store, "stores", None)
    target = tiers[-1] if tiers else store
    if target is None or isinstance(target, GPUStore) or not callable(getattr(target, "get", None)):
        return None
    return target


def measure_transfer(store: Any, nbytes: int, repeats: int = 3) -> dict[str, float] | None:
    """{"bandwidth": bytes/s, "latency": s} of reads from the slowest tier (median of `repeats` reads
    of an `nbytes` tensor and of a one-element tensor), or None when there is no slow tier. The probe
    entries are dropped afterwards."""
    target = slowest_tier(store)
    if target is None:
        return None
    big, small = ("edit-probe", "big", id(target)), ("edit-probe", "small", id(target))
    if not (target.put(big, torch.randn(max(1, nbytes // 4))) and target.put(small, torch.zeros(1))):
        return None
    try:
        def timed(key: tuple) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                target.get(key)
                times.append(time.perf_counter() - start)
            return sorted(times)[len(times) // 2]
        latency = timed(small)
        seconds = max(timed(big) - latency, 1e-9)
    finally:
        for key in (big, small):
            target.drop(key)
    return {"bandwidth": nbytes / seconds, "latency": latency}
