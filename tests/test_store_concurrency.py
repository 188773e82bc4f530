"""Threads racing on the same keys, and a long churn that must leave nothing behind."""

from __future__ import annotations

import os
import random
import sys
import threading

import pytest
import torch

from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore
from edit.runtime.store._entryfile import CHUNK_BYTES
from test_store_util import held_bytes, open_fds

KEYS = [(0, step, branch, 0) for step in range(3) for branch in ("cond", "uncond")]
BIG_KEY = KEYS[0]  # its values span several checksum chunks, so reads and writes take a while
JOIN_TIMEOUT_S = 60


def _value(key_index: int, version: int) -> torch.Tensor:
    """A uniform tensor whose fill value names its key and version, so any mix-up is visible."""
    numel = (CHUNK_BYTES + 4096) // 4 if KEYS[key_index] == BIG_KEY else 64 + 16 * key_index
    return torch.full((numel,), float(key_index * 100_000 + version))


def _check(key_index: int, got: torch.Tensor | None) -> None:
    if got is None:
        return
    first = got[0].item()
    assert int(first) // 100_000 == key_index, f"key {key_index} returned a value of key {int(first) // 100_000}"
    assert got.numel() == _value(key_index, 0).numel() and bool((got == first).all()), "torn value"


def _race(store, ops_per_thread: int, threads: int = 4) -> None:
    errors: list[BaseException] = []
    versions = iter(range(1, 10**9))
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(ops_per_thread):
                index = rng.randrange(len(KEYS))
                op = rng.choice(["put", "get", "get", "prefetch", "prefetch", "drop"])
                if op == "put":
                    if KEYS[index] == BIG_KEY and rng.random() < 0.8:
                        continue  # keep the big writes rare enough for the time budget
                    with lock:
                        version = next(versions)
                    store.put(KEYS[index], _value(index, version))
                elif op == "get":
                    _check(index, store.get(KEYS[index]))
                elif op == "prefetch":
                    store.prefetch(KEYS[index])
                else:
                    store.drop(KEYS[index])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that operations really interleave
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(JOIN_TIMEOUT_S)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in pool), "deadlock: a worker did not finish"
    if errors:
        raise errors[0]


def test_disk_store_prefetch_get_drop_race(tmp_path):
    with DiskStore(tmp_path / "d", device="cpu", max_workers=2) as store:
        _race(store, ops_per_thread=1500)
        assert store.nbytes == held_bytes(store)
        files = [name for name in os.listdir(store.folder) if name != "owner.lock"]
        assert sorted(files) == sorted(store.path(k).name for k in store.keys())


def test_cpu_store_prefetch_get_drop_race():
    with CPUStore(device="cpu") as store:
        _race(store, ops_per_thread=3000)
        assert store.nbytes == held_bytes(store)


def _tiers(directory, promote=True, disk_budget=2 * CHUNK_BYTES) -> TieredStore:
    return TieredStore([(GPUStore(device="cpu"), 2048), (CPUStore(device="cpu"), 4096),
                        (DiskStore(directory, device="cpu"), disk_budget)], promote=promote)


@pytest.mark.parametrize("promote", [True, False])
def test_tiered_store_race_keeps_data_and_accounting_exact(tmp_path, promote):
    store = _tiers(tmp_path / "d", promote)
    _race(store, ops_per_thread=1000)
    for tier, (budget, inner) in enumerate(zip(store.budgets, store.stores)):
        assert store.tier_bytes[tier] == inner.nbytes == held_bytes(inner) <= budget
    for index, key in enumerate(KEYS):
        _check(index, store.get(key))
    store.close()


def _snapshot(directory) -> tuple:
    return threading.active_count(), open_fds(), sorted(os.listdir(directory))


def test_soak_leaves_no_files_fds_or_threads_behind(tmp_path):
    directory = tmp_path / "soak"
    directory.mkdir()
    _tiers(directory, disk_budget=16384).close()  # warm-up: one-time lazy imports and fds are not leaks
    baseline = _snapshot(directory)
    store = _tiers(directory, disk_budget=16384)
    rng = random.Random(0)
    keys = [(gen, step, "cond", unit) for gen in range(1, 5) for step in range(4) for unit in range(4)]
    for i in range(4000):
        key = rng.choice(keys)
        op = rng.choices(["put", "get", "prefetch", "drop"], weights=[4, 4, 2, 1])[0]
        if op == "put":
            store.put(key, torch.full((rng.randint(1, 400),), float(i)))
        elif op == "get":
            store.get(key)
        elif op == "prefetch":
            store.prefetch(key)
        else:
            store.drop(key)
    _race(store, ops_per_thread=100)  # some concurrent churn on top, prefetches left in flight
    stats = store.stats
    assert stats.spills > 100 and stats.evictions > 10 and stats.tiers[2].hits > 10
    store.prefetch(store.keys()[-1])
    store.clear()
    assert store.nbytes == 0 and store.tier_bytes == [0, 0, 0] and len(store) == 0
    assert os.listdir(store.stores[2].folder) == ["owner.lock"]  # no entry or temp file left
    store.close()
    assert _snapshot(directory) == baseline
