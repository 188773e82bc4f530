"""The cache-store interface: a byte-accounted map from tuple keys to tensors.

A store answers ``get`` with a tensor on its compute device or with ``None``; ``None`` is always
safe, because the executor then recomputes the unit. Returned tensors may alias what the store
holds, so callers treat them as read-only.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from collections import OrderedDict
from typing import Any, Hashable

import torch

from edit.runtime.store._checks import check_key
from edit.runtime.store.stats import Counters, StoreStats, TieredStats

#: A store key: a hashable tuple such as ``(generation, step, branch, unit)``.
Key = tuple[Hashable, ...]


class CacheStore(abc.ABC):
    """Abstract base of the GPU, CPU, disk and tiered stores.

    ``device`` is where ``get`` returns tensors; ``budget`` is the store's own byte limit (``None``:
    unlimited). Stores are thread-safe and usable as context managers (``close`` on exit).
    """

    device: torch.device
    budget: int | None = None

    @abc.abstractmethod
    def put(self, key: Key, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key`` (replacing any old value); False when it could not be stored."""

    @abc.abstractmethod
    def get(self, key: Key) -> torch.Tensor | None:
        """The value on ``self.device``, or None when absent or unreadable."""

    @abc.abstractmethod
    def peek(self, key: Key) -> torch.Tensor | None:
        """The value where the store keeps it (no copy to the device, no LRU or hit accounting).

        Tier-to-tier moves use it so that, e.g., CPU to disk never passes through the GPU.
        """

    @abc.abstractmethod
    def prefetch(self, key: Key) -> None:
        """Start moving ``key`` toward the device off the critical path; a no-op for a missing key."""

    @abc.abstractmethod
    def drop(self, key: Key) -> None:
        """Forget ``key`` (and any prefetch in flight for it); a no-op for a missing key."""

    @abc.abstractmethod
    def keys(self) -> list[Key]:
        """A snapshot of the keys held."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release everything the store holds (memory, files, threads); idempotent.

        Disk and tiered stores refuse ``put`` afterwards (ValueError); memory-only stores are simply empty.
        """

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Exact tensor payload bytes held (``sum(t.nbytes)`` over the entries)."""

    @property
    @abc.abstractmethod
    def stats(self) -> StoreStats | TieredStats:
        """A frozen snapshot of the store's counters (``.as_dict()`` gives a plain dict)."""

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def validate_key(self, key: Key) -> None:
        """Raise (TypeError/ValueError) if ``put`` would refuse ``key``; a TieredStore asks every tier
        up front, so a key a lower tier cannot hold is refused at ``put``, not lost at a spill."""
        check_key(key)

    def accepts(self, tensor: torch.Tensor) -> bool:
        """Whether this kind of store can hold ``tensor`` at all (e.g. disk needs a safetensors dtype)."""
        return True

    def clear(self) -> None:
        """Drop every entry; the store stays open."""
        for key in self.keys():
            self.drop(key)

    def __enter__(self) -> "CacheStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.device)!r}, entries={len(self)}, nbytes={self.nbytes})"


class SingleTierStore(CacheStore):
    """The bookkeeping the GPU, CPU and disk stores share: one lock guarding an entry table, the
    exact payload byte count and the counters. Subclasses fill ``_entries`` and remove through
    ``_remove`` (called with the lock held; True when ``key`` was present)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Key, Any] = OrderedDict()  # least recently used first
        self._nbytes = 0
        self._lock = threading.Lock()
        self._counters = Counters()

    @abc.abstractmethod
    def _remove(self, key: Any) -> bool: ...

    def _copy_in(self, copy: Callable[[], Any]) -> tuple[Any, float] | None:
        """Run ``copy()`` (outside the lock) and time it; None, counted as rejected, when memory ran out."""
        start = time.perf_counter()
        try:
            value = copy()
        except torch.OutOfMemoryError:
            with self._lock:
                self._counters.rejected += 1
            return None
        return value, time.perf_counter() - start

    def _insert(self, key: Key, value: Any, nbytes: int, seconds: float) -> None:
        """Record a stored entry (lock held), replacing a concurrent put of the same key that landed
        while this one was copying."""
        self._remove(key)
        self._entries[key] = value
        self._nbytes += nbytes
        self._counters.puts += 1
        self._counters.transfer_seconds += seconds

    def _lookup(self, key: Key) -> Any:
        """``key``'s entry (lock held), counted as a hit and made most recent, or None and a miss."""
        value = self._entries.get(key)
        if value is None:
            self._counters.misses += 1
            return None
        self._entries.move_to_end(key)
        self._counters.hits += 1
        return value

    def drop(self, key: Key) -> None:
        """Forget ``key`` (no-op when absent)."""
        with self._lock:
            if self._remove(key):
                self._counters.drops += 1

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def stats(self) -> StoreStats:
        with self._lock:
            return self._counters.snapshot(len(self._entries), self._nbytes)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
