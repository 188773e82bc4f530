"""Statistics records of the cache stores: frozen snapshots that are cheap to take and plain to print."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class StoreStats:
    """One store's counters at one moment; ``nbytes`` is the exact tensor payload held.

    ``rejected`` counts puts that were not stored (too large, allocation or write failure);
    ``errors`` counts I/O failures (failed writes, unreadable or corrupted files);
    ``transfer_seconds`` is host wall time spent copying bytes in or out of the store;
    ``late_wait_seconds`` the time `get` waited for prefetches still in flight.
    """

    entries: int = 0
    nbytes: int = 0
    puts: int = 0
    rejected: int = 0
    hits: int = 0
    misses: int = 0
    drops: int = 0
    evictions: int = 0
    errors: int = 0
    prefetches: int = 0
    prefetch_hits: int = 0
    late_waits: int = 0
    late_wait_seconds: float = 0.0
    transfer_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (JSON-ready)."""
        return attrs.asdict(self)


class _Snapshot:
    def snapshot(self, entries: int, nbytes: int) -> StoreStats:
        """Freeze the counters together with the store's current size."""
        return StoreStats(entries=entries, nbytes=nbytes, **attrs.asdict(self))


#: The mutable counters behind :class:`StoreStats` (its fields less the size ones, so the two cannot
#: drift apart); guarded by the owning store's lock.
Counters = attrs.make_class(
    "Counters", {a.name: attrs.field(default=a.default) for a in attrs.fields(StoreStats)
                 if a.name not in ("entries", "nbytes")}, bases=(_Snapshot,))


@attrs.frozen
class TierStats:
    """One tier of a :class:`~edit.runtime.store.TieredStore`.

    ``spills`` are entries moved from this tier to a lower one, ``evictions`` entries dropped from it
    for lack of room below, ``promotions`` entries moved up into it on a hit, ``lost`` entries its store
    could no longer return (e.g. a corrupted file), ``misses`` lookups that passed through it.
    """

    name: str
    budget: int | None
    nbytes: int
    entries: int
    hits: int
    misses: int
    spills: int
    evictions: int
    promotions: int
    lost: int
    bytes_in: int = 0


@attrs.frozen
class TieredStats:
    """A :class:`~edit.runtime.store.TieredStore` snapshot: per-tier records plus totals."""

    tiers: tuple[TierStats, ...]
    nbytes: int
    entries: int
    puts: int
    rejected: int
    hits: int
    misses: int
    spills: int
    evictions: int
    promotions: int
    prefetches: int
    prefetch_hits: int
    late_waits: int
    late_wait_seconds: float
    move_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The record as a plain dict (JSON-ready); ``tiers`` becomes a list of dicts."""
        return attrs.asdict(self)
