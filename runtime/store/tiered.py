"""TieredStore: a stack of stores (e.g. GPU -> CPU -> disk) with a byte budget per tier and LRU spilling."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import torch

from edit.runtime.store._checks import check_bool, check_budget, check_key, check_tensor
from edit.runtime.store.base import CacheStore, Key
from edit.runtime.store.stats import TieredStats, TierStats


@attrs.define(eq=False)
class _Tier:
    """One tier's store, budget and bookkeeping; ``ticks`` orders its entries by last use."""

    store: CacheStore
    budget: int | None
    name: str
    nbytes: int = 0
    ticks: dict[Key, int] = attrs.Factory(dict)
    # (tick, key) pairs, lazily pruned: a pair is live only while ticks[key] == tick. Ticks are
    # unique, so the heap never has to compare keys.
    heap: list[tuple[int, Key]] = attrs.Factory(list)
    hits: int = 0
    misses: int = 0
    spills: int = 0
    evictions: int = 0
    promotions: int = 0
    lost: int = 0
    bytes_in: int = 0  # bytes moved into this tier by spills from above and promotions from below

    def fits(self, nbytes: int) -> bool:
        return self.budget is None or nbytes <= self.budget

    def over_budget(self) -> bool:
        return self.budget is not None and self.nbytes > self.budget

    def add(self, key: Key, nbytes: int, tick: int) -> None:
        self.nbytes += nbytes
        self.touch(key, tick)

    def touch(self, key: Key, tick: int) -> None:
        self.ticks[key] = tick
        heapq.heappush(self.heap, (tick, key))
        if len(self.heap) > 2 * len(self.ticks) + 64:
            self.heap = [(t, k) for k, t in self.ticks.items()]
            heapq.heapify(self.heap)

    def remove(self, key: Key, nbytes: int) -> int:
        """Forget ``key``; returns its last-use tick."""
        self.nbytes -= nbytes
        return self.ticks.pop(key)

    def least_recent(self) -> Key:
        while True:
            tick, key = self.heap[0]
            if self.ticks.get(key) == tick:
                return key
            heapq.heappop(self.heap)

    def snapshot(self) -> TierStats:
        return TierStats(name=self.name, budget=self.budget, nbytes=self.nbytes, entries=len(self.ticks),
                         hits=self.hits, misses=self.misses, spills=self.spills, evictions=self.evictions,
                         promotions=self.promotions, lost=self.lost, bytes_in=self.bytes_in)


class TieredStore(CacheStore):
    """Stores tiered by speed, each with a byte budget: new entries land in tier 0, and whenever a tier
    is over budget its least-recently-used entries move one tier down (the last tier drops them).

    Moves go store to store through :meth:`CacheStore.peek`, so a CPU-to-disk spill writes the host
    copy and never passes through the GPU. An entry larger than a tier's budget (or of a dtype the
    tier cannot hold) skips it; one that fits nowhere is not stored. A failed move (e.g. a disk
    write hitting ENOSPC) also tries the tiers further down, and otherwise drops the entry, counted
    as an eviction: the tier it would stay in is over budget by definition. With ``promote`` a hit in
    a lower tier moves the entry up to the highest tier with room for it, spilling others as needed.

    The tier stores belong to the TieredStore (use them only through it); they must start empty and
    have no budget of their own. One re-entrant lock guards the index and every move; disk prefetch
    reads run on the disk store's thread pool, outside it.

    >>> from edit.runtime.store import CPUStore, GPUStore
    >>> tiers = TieredStore([(GPUStore(device="cpu"), 64), (CPUStore(device="cpu"), None)])
    >>> for step in range(3):
    ...     _ = tiers.put((0, step, "cond", 0), torch.zeros(8))   # 32 bytes each
    >>> tiers.tier_bytes
    [64, 32]
    >>> tiers.get((0, 0, "cond", 0)) is not None, tiers.tier_bytes   # a hit in tier 1 is promoted
    (True, [64, 32])
    """

    def __init__(self, tiers: Sequence[tuple[CacheStore, int | None]], promote: bool = True) -> None:
        self._tiers = _validated_tiers(tiers)
        self.promote = check_bool(promote, "promote")
        self.device = self._tiers[0].store.device
        self._where: dict[Key, int] = {}
        self._size: dict[Key, int] = {}
        self._clock = itertools.count(1)
        self._lock = threading.RLock()
        self._puts = self._rejected = self._hits = self._misses = 0
        self._move_seconds = 0.0
        self._closed = False
        # keys asked for by `prefetch` and not read yet: an entry that spills down meanwhile is staged
        # again from the tier it lands in, so the read still finds it arriving
        self._wanted: set[Key] = set()

    @property
    def stores(self) -> list[CacheStore]:
        """The tier stores, top first (read-only use: stats, inspection)."""
        return [tier.store for tier in self._tiers]

    @property
    def budgets(self) -> list[int | None]:
        """The per-tier byte budgets, top first."""
        return [tier.budget for tier in self._tiers]

    @property
    def tier_bytes(self) -> list[int]:
        """Exact payload bytes held per tier, top first."""
        with self._lock:
            return [tier.nbytes for tier in self._tiers]

    def put(self, key: Key, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` in the highest tier it fits, then spill LRU entries down as budgets demand."""
        check_key(key)
        for tier in self._tiers:
            tier.store.validate_key(key)
        check_tensor(tensor)
        with self._lock:
            if self._closed:
                raise ValueError("TieredStore is closed; put needs an open store")
            self._remove(key)
            self._puts += 1
            placed = self._place(key, tensor, tensor.nbytes, next(self._clock), range(len(self._tiers)))
            if placed is None:
                self._rejected += 1
                return False
            self._rebalance(placed)
            return True

    def get(self, key: Key) -> torch.Tensor | None:
        """The value on the device, or None; a lower-tier hit is promoted when ``promote`` is set."""
        with self._lock:
            self._wanted.discard(key)
            index = self._where.get(key)
            for tier in self._tiers[:len(self._tiers) if index is None else index]:
                tier.misses += 1
            if index is None:
                self._misses += 1
                return None
            tier = self._tiers[index]
            value = tier.store.get(key)
            if value is None:
                self._forget_lost(key, index)
                tier.misses += 1
                self._misses += 1
                return None
            tier.hits += 1
            self._hits += 1
            tick = next(self._clock)
            if not (index > 0 and self.promote and self._promote(key, value, index, tick)):
                tier.touch(key, tick)
            return value

    def peek(self, key: Key) -> torch.Tensor | None:
        """The value where its tier keeps it (no promotion, no hit accounting)."""
        with self._lock:
            index = self._where.get(key)
            if index is None:
                return None
            value = self._tiers[index].store.peek(key)
            if value is None:
                self._forget_lost(key, index)
            return value

    def prefetch(self, key: Key) -> None:
        """Ask the entry's tier to stage it toward the device (and again from the tier it spills to,
        should it spill before it is read); a no-op for a missing key."""
        with self._lock:
            index = self._where.get(key)
            if index is not None:
                self._wanted.add(key)
                self._tiers[index].store.prefetch(key)

    def drop(self, key: Key) -> None:
        """Forget ``key`` in whichever tier holds it."""
        with self._lock:
            self._remove(key)

    def tier_of(self, key: Key) -> int | None:
        """Index of the tier holding ``key``, or None."""
        with self._lock:
            return self._where.get(key)

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._where)

    def accepts(self, tensor: torch.Tensor) -> bool:
        return any(tier.store.accepts(tensor) for tier in self._tiers)

    def close(self) -> None:
        """Close every tier store (their memory, files and threads are released)."""
        with self._lock:
            self._closed = True
            for tier in self._tiers:
                tier.store.close()
                tier.nbytes = 0
                tier.ticks.clear()
                tier.heap.clear()
            self._where.clear()
            self._size.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(tier.nbytes for tier in self._tiers)

    @property
    def stats(self) -> TieredStats:
        with self._lock:
            tiers = tuple(tier.snapshot() for tier in self._tiers)
            inner = [tier.store.stats for tier in self._tiers]
            return TieredStats(
                tiers=tiers, nbytes=sum(t.nbytes for t in tiers), entries=len(self._where),
                puts=self._puts, rejected=self._rejected, hits=self._hits, misses=self._misses,
                spills=sum(t.spills for t in tiers), evictions=sum(t.evictions for t in tiers),
                promotions=sum(t.promotions for t in tiers),
                prefetches=sum(s.prefetches for s in inner), prefetch_hits=sum(s.prefetch_hits for s in inner),
                late_waits=sum(s.late_waits for s in inner),
                late_wait_seconds=sum(s.late_wait_seconds for s in inner), move_seconds=self._move_seconds)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _place(self, key: Key, tensor: torch.Tensor, nbytes: int, tick: int,
               candidates: Iterable[int]) -> int | None:
        """Put into the first candidate tier that fits, accepts and succeeds; its index, or None."""
        for index in candidates:
            tier = self._tiers[index]
            if tier.fits(nbytes) and tier.store.accepts(tensor) and tier.store.put(key, tensor):
                tier.add(key, nbytes, tick)
                self._where[key] = index
                self._size[key] = nbytes
                return index
        return None

    def _rebalance(self, start: int) -> None:
        # Spills only go down, so one top-to-bottom pass settles every tier.
        for index in range(start, len(self._tiers)):
            tier = self._tiers[index]
            while tier.over_budget():
                self._spill(tier.least_recent(), index)

    def _spill(self, key: Key, index: int) -> None:
        """Move ``key`` from tier ``index`` to the next tier down that takes it, else drop it."""
        started = time.perf_counter()
        tier = self._tiers[index]
        nbytes = self._size.pop(key)
        tick = tier.remove(key, nbytes)
        del self._where[key]
        below = [k for k in range(index + 1, len(self._tiers)) if self._tiers[k].fits(nbytes)]
        if not below:
            tier.evictions += 1  # nothing below can take it: drop it unread (last-tier evictions cost no I/O)
        else:
            value = tier.store.peek(key)
            if value is None:
                tier.lost += 1
            else:
                placed = self._place(key, value, nbytes, tick, below)
                if placed is None:
                    tier.evictions += 1
                else:
                    tier.spills += 1
                    self._tiers[placed].bytes_in += nbytes
                    if key in self._wanted:
                        self._tiers[placed].store.prefetch(key)
        tier.store.drop(key)
        self._move_seconds += time.perf_counter() - started

    def _promote(self, key: Key, value: torch.Tensor, index: int, tick: int) -> bool:
        """Move a hit from tier ``index`` to the highest tier above it that takes it."""
        started = time.perf_counter()
        tier = self._tiers[index]
        nbytes = self._size[key]
        tier.remove(key, nbytes)
        placed = self._place(key, value, nbytes, tick, range(index))
        if placed is None:
            tier.add(key, nbytes, tick)
            return False
        tier.store.drop(key)
        self._tiers[placed].promotions += 1
        self._tiers[placed].bytes_in += nbytes
        self._rebalance(placed)
        self._move_seconds += time.perf_counter() - started
        return True

    def _forget_lost(self, key: Key, index: int) -> None:
        """The tier's store could not return ``key`` (e.g. a corrupted file) and forgot it: so do we."""
        tier = self._tiers[index]
        tier.remove(key, self._size.pop(key))
        del self._where[key]
        tier.lost += 1
        tier.store.drop(key)  # normally a no-op: the store already forgot it

    def _remove(self, key: Any) -> bool:
        self._wanted.discard(key)
        index = self._where.pop(key, None)
        if index is None:
            return False
        tier = self._tiers[index]
        tier.remove(key, self._size.pop(key))
        tier.store.drop(key)
        return True


def _validated_tiers(tiers: Any) -> list[_Tier]:
    if isinstance(tiers, (str, bytes)) or not isinstance(tiers, Sequence):
        raise TypeError(f"tiers must be a list of (store, budget_bytes | None) pairs; got {type(tiers).__name__}")
    if not tiers:
        raise ValueError("tiers must hold at least one (store, budget_bytes | None) pair; got none")
    result: list[_Tier] = []
    for i, pair in enumerate(tiers):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"tiers[{i}] must be a (store, budget_bytes | None) pair; got {pair!r}")
        store, budget = pair
        if not isinstance(store, CacheStore):
            raise TypeError(f"tiers[{i}] store must be a CacheStore (GPUStore, CPUStore, DiskStore, ...); "
                            f"got {type(store).__name__}")
        budget = check_budget(budget, f"tiers[{i}] budget")
        if store.budget is not None:
            raise ValueError(f"tiers[{i}] store has its own budget={store.budget}; it must be None "
                             "(give the tier's budget in the pair)")
        if len(store):
            raise ValueError(f"tiers[{i}] store must start empty; it holds {len(store)} entries")
        if any(store is tier.store for tier in result):
            raise ValueError(f"tiers[{i}] store is already tier {[t.store for t in result].index(store)}; "
                             "each tier needs its own store")
        if result and store.device != result[0].store.device:
            raise ValueError(f"tiers[{i}] store device {store.device} differs from tier 0's "
                             f"{result[0].store.device}; all tiers must serve one device")
        result.append(_Tier(store, budget, f"{i}:{type(store).__name__}"))
    return result
