"""Cache stores for residuals: GPU references, pinned host copies, safetensors files, and a tiered stack.

Every store maps tuple keys such as ``(generation, step, branch, unit)`` to tensors, accounts bytes
exactly, and answers ``get`` with a tensor on its compute device or ``None`` (always safe: the caller
recomputes). On a CPU-only machine the CPU plays the device.

>>> import tempfile, torch
>>> from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore
>>> tmp = tempfile.TemporaryDirectory()
>>> store = TieredStore([(GPUStore(device="cpu"), 1 << 10),
...                      (CPUStore(device="cpu"), 2 << 10),
...                      (DiskStore(tmp.name, device="cpu"), 8 << 10)])
>>> for unit in range(8):
...     _ = store.put((0, 0, "cond", unit), torch.full((128,), float(unit)))   # 512 bytes each
>>> store.tier_bytes
[1024, 2048, 1024]
>>> store.get((0, 0, "cond", 0))[:3].tolist(), store.stats.tiers[2].hits
([0.0, 0.0, 0.0], 1)
>>> from edit.runtime.store import StoreStats, TieredStats, TierStats
>>> stats = store.stats
>>> isinstance(stats, TieredStats), isinstance(stats.tiers[0], TierStats), isinstance(store.stores[2].stats, StoreStats)
(True, True, True)
>>> stats.as_dict()["tiers"][1]["spills"], stats.tiers[0].promotions
(3, 1)
>>> store.close(); store.nbytes
0
>>> tmp.cleanup()
"""

from edit.runtime.store.base import CacheStore, Key
from edit.runtime.store.cpu import CPUStore
from edit.runtime.store.disk import DiskStore
from edit.runtime.store.gpu import GPUStore
from edit.runtime.store.stats import StoreStats, TieredStats, TierStats
from edit.runtime.store.tiered import TieredStore

__all__ = ["CPUStore", "CacheStore", "DiskStore", "GPUStore", "Key", "StoreStats", "TierStats",
           "TieredStats", "TieredStore"]
