"""The store API on each store, tier-to-tier moves, and argument checking."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from edit.runtime.store import CacheStore, CPUStore, DiskStore, GPUStore, StoreStats, TieredStats, TieredStore
from test_store_util import DTYPES, LAYOUTS, bits_equal, held_bytes, make_tensor

DEVICE = "cpu"  # the CPU plays the device here; test_store_cuda.py covers CUDA


@pytest.mark.parametrize("module", ["edit.runtime.store", "edit.runtime.store.gpu", "edit.runtime.store.cpu",
                                    "edit.runtime.store.disk", "edit.runtime.store.tiered"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(params=["gpu", "cpu", "disk"])
def store(request, tmp_path) -> CacheStore:
    made = {"gpu": lambda: GPUStore(device=DEVICE), "cpu": lambda: CPUStore(device=DEVICE),
            "disk": lambda: DiskStore(tmp_path / "disk", device=DEVICE)}[request.param]()
    yield made
    made.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_store_round_trips_every_dtype_bit_exactly(store, layout):
    expected = {}
    for i, dtype in enumerate(DTYPES):
        for numel in (0, 1, 13, 24):
            key = (0, i, "cond", numel)
            expected[key] = make_tensor(dtype, numel, layout, seed=i * 100 + numel)
            assert store.put(key, expected[key]) is True
    assert len(store) == len(expected)
    assert store.nbytes == sum(t.nbytes for t in expected.values()) == held_bytes(store)
    for key, value in expected.items():
        assert key in store
        got = store.get(key)
        assert got.device.type == DEVICE and bits_equal(got, value), key
    stats = store.stats
    assert isinstance(stats, StoreStats) and stats.hits == len(expected) and stats.as_dict()["entries"] == len(expected)


def test_put_replaces_drop_forgets_clear_and_close_empty(store):
    key = ("g", 1, "uncond", 2)
    store.put(key, torch.ones(10))
    store.put(key, torch.zeros(3, dtype=torch.int64))
    assert len(store) == 1 and store.nbytes == 24 and bits_equal(store.get(key), torch.zeros(3, dtype=torch.int64))
    store.drop(key)
    store.drop(key)  # dropping a missing key is a no-op
    assert key not in store and store.get(key) is None and store.nbytes == 0
    assert store.stats.misses == 1 and store.stats.drops == 1
    for unit in range(5):
        store.put(("g", 0, "cond", unit), torch.full((4,), unit))
    store.prefetch(("g", 0, "cond", 1))
    store.prefetch(("absent",))  # prefetching a missing key is a no-op
    store.clear()
    assert len(store) == 0 and store.nbytes == 0 and store.keys() == []
    store.close()
    store.close()  # idempotent
    assert store.nbytes == 0


def test_gpu_store_holds_references_but_compacts_views():
    store = GPUStore(device=DEVICE)
    whole = torch.randn(64, 64)
    store.put((0,), whole)
    assert store.get((0,)).data_ptr() == whole.data_ptr()  # by reference: no copy
    store.put((1,), whole.t())  # dense permutation of its own storage: still by reference
    assert store.get((1,)).data_ptr() == whole.data_ptr()
    store.put((2,), whole[:2])  # a view into a larger buffer would pin 16 KB for 512 B: copied
    assert store.get((2,)).data_ptr() != whole.data_ptr() and store.nbytes == 2 * whole.nbytes + 512
    grad = torch.randn(4, requires_grad=True) * 2
    store.put((3,), grad)
    assert store.get((3,)).grad_fn is None  # no autograd graph kept alive through the cache


def test_gpu_store_budget_evicts_least_recently_used():
    store = GPUStore(device=DEVICE, budget=100)
    for i in range(3):
        assert store.put((i,), torch.zeros(10))  # 40 bytes each
    assert store.keys() == [(1,), (2,)] and store.stats.evictions == 1
    store.get((1,))  # (1,) becomes most recent, so (2,) goes next
    store.put((3,), torch.zeros(10))
    assert sorted(store.keys()) == [(1,), (3,)] and store.nbytes == 80
    assert store.put((1,), torch.zeros(26)) is False  # larger than the budget: not stored ...
    assert (1,) not in store and store.stats.rejected == 1  # ... and the old value is gone too


def test_cpu_store_keeps_a_private_host_copy():
    store = CPUStore(device=DEVICE)
    assert store.pin_memory is False  # pinning is silently off when the device is the cpu
    source = torch.arange(6.0)
    store.put((0,), source)
    source.add_(100)
    assert store.get((0,)).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    store.put((1,), source[::2])
    assert store.nbytes == 24 + 12 and store.peek((1,)).is_contiguous()


def _three_tiers(tmp_path, budgets=(64, 128, None), promote=True) -> TieredStore:
    return TieredStore([(GPUStore(device=DEVICE), budgets[0]), (CPUStore(device=DEVICE), budgets[1]),
                        (DiskStore(tmp_path / "tier2", device=DEVICE), budgets[2])], promote=promote)


def _assert_exact(store: TieredStore) -> None:
    for tier, (budget, store_) in enumerate(zip(store.budgets, store.stores)):
        assert store.tier_bytes[tier] == store_.nbytes == held_bytes(store_)
        assert budget is None or store.tier_bytes[tier] <= budget


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_tiered_path_0_1_2_then_promoted_to_0_is_bit_exact(tmp_path, dtype, layout):
    store = _three_tiers(tmp_path, budgets=(256, 256, None))
    value = make_tensor(dtype, 24, layout, seed=3)  # <= 192 bytes: fits any tier
    key = ("gen", 0, "cond", "x")
    store.put(key, value)
    seen = [store.tier_of(key)]
    for i in range(2):  # each 256-byte filler pushes everything older one tier down
        store.put(("filler", i), torch.zeros(64))
        seen.append(store.tier_of(key))
        assert bits_equal(store.peek(key), value)
        _assert_exact(store)
    assert seen == [0, 1, 2]
    assert bits_equal(store.get(key), value) and store.tier_of(key) == 0
    assert store.stats.tiers[0].promotions == 1 and store.stats.tiers[2].hits == 1
    _assert_exact(store)
    store.close()


def test_cpu_to_disk_spill_uses_the_host_copy_not_the_device(tmp_path, monkeypatch):
    store = _three_tiers(tmp_path, budgets=(64, 64, None))
    gpu, cpu, disk = store.stores
    store.put(("a",), torch.ones(16))  # 64 bytes
    store.put(("b",), torch.ones(16))  # a -> cpu
    calls = []
    monkeypatch.setattr(cpu, "get", lambda key: calls.append(("cpu.get", key)))
    real_put, real_disk_put = gpu.put, disk.put
    monkeypatch.setattr(gpu, "put", lambda key, t: calls.append(("gpu.put", key)) or real_put(key, t))
    monkeypatch.setattr(disk, "put", lambda key, t: calls.append(("disk.put", key, t.device.type)) or
                        real_disk_put(key, t))
    store.put(("c",), torch.ones(16))  # b -> cpu, a -> disk
    assert calls == [("gpu.put", ("c",)), ("disk.put", ("a",), "cpu")]
    assert [store.tier_of(k) for k in [("a",), ("b",), ("c",)]] == [2, 1, 0]


def test_oversized_entries_skip_tiers_or_are_rejected(tmp_path):
    store = _three_tiers(tmp_path, budgets=(64, 128, 256))
    assert store.put(("mid",), torch.zeros(20)) and store.tier_of(("mid",)) == 1  # 80 B > tier 0
    assert store.put(("big",), torch.zeros(50)) and store.tier_of(("big",)) == 2  # 200 B > tier 1
    assert store.put(("huge",), torch.zeros(65)) is False and ("huge",) not in store  # 260 B > all
    assert store.stats.rejected == 1 and store.tier_bytes == [0, 80, 200]
    _assert_exact(store)
    store.close()


def test_last_tier_evicts_least_recent_and_stats_add_up(tmp_path):
    store = _three_tiers(tmp_path, budgets=(64, 64, 64))
    for i in range(5):
        store.put((i,), torch.full((16,), float(i)))  # 64 bytes each: one per tier
    assert [store.tier_of((i,)) for i in range(5)] == [None, None, 2, 1, 0]
    stats = store.stats
    assert isinstance(stats, TieredStats) and stats.evictions == 2 and stats.tiers[2].evictions == 2
    assert [t.spills for t in stats.tiers] == [4, 3, 0] and stats.nbytes == 192
    assert store.get((0,)) is None and store.stats.misses == 1
    assert [t.misses for t in store.stats.tiers] == [1, 1, 1]
    assert store.get((2,)).tolist() == [2.0] * 16  # a disk hit: misses in tiers 0 and 1
    assert [t.misses for t in store.stats.tiers] == [2, 2, 1] and store.stats.tiers[2].hits == 1
    assert store.stats.as_dict()["tiers"][2]["hits"] == 1
    _assert_exact(store)
    store.close()


def test_recent_use_decides_which_entry_spills(tmp_path):
    store = _three_tiers(tmp_path, budgets=(128, None, None))
    store.put(("old",), torch.zeros(16))
    store.put(("new",), torch.zeros(16))
    store.get(("old",))  # now most recent
    store.put(("newest",), torch.zeros(16))
    assert store.tier_of(("new",)) == 1 and store.tier_of(("old",)) == 0
    store.close()


def test_without_promotion_hits_stay_in_their_tier(tmp_path):
    store = _three_tiers(tmp_path, budgets=(64, 64, None), promote=False)
    for i in range(3):
        store.put((i,), torch.full((16,), float(i)))
    assert store.get((0,)).tolist() == [0.0] * 16 and store.tier_of((0,)) == 2
    assert store.stats.promotions == 0
    store.close()


def test_promotion_goes_to_the_highest_tier_with_room(tmp_path):
    store = _three_tiers(tmp_path, budgets=(64, 256, None))
    store.put(("wide",), torch.zeros(32))  # 128 B: lives in tier 1 at best
    store.put(("push",), torch.zeros(64))  # 256 B: pushes it to tier 2
    assert store.tier_of(("wide",)) == 2
    store.get(("wide",))
    assert store.tier_of(("wide",)) == 1 and store.tier_of(("push",)) == 2
    _assert_exact(store)
    store.close()


def _bad(exc, match):
    return pytest.raises(exc, match=match)


def test_user_errors_name_the_argument_and_the_allowed_values(tmp_path):
    with _bad(ValueError, "budget must be a positive int"):
        GPUStore(device=DEVICE, budget=0)
    with _bad(ValueError, "budget must be a positive int"):
        GPUStore(device=DEVICE, budget=-5)
    with _bad(TypeError, "budget must be a positive int"):
        GPUStore(device=DEVICE, budget=1.5)
    with _bad(TypeError, "budget must be a positive int"):
        GPUStore(device=DEVICE, budget=True)
    with _bad(ValueError, "device must be None, 'cpu' or 'cuda"):
        GPUStore(device="tpu")
    with _bad(TypeError, "device must be None, a str or a torch.device"):
        CPUStore(device=3)
    if not torch.cuda.is_available():
        with _bad(ValueError, "needs CUDA"):
            GPUStore(device="cuda")
    with _bad(TypeError, "pin_memory must be True or False"):
        CPUStore(pin_memory="yes")
    with _bad(TypeError, "directory must be a str or os.PathLike"):
        DiskStore(3)
    (tmp_path / "file").write_text("x")
    with _bad(ValueError, "directory must be a directory path"):
        DiskStore(tmp_path / "file")
    with _bad(ValueError, "max_workers must be a positive int"):
        DiskStore(tmp_path / "d", max_workers=0)
    with _bad(TypeError, "keep must be True or False"):
        DiskStore(tmp_path / "d", keep=1)
    gpu = GPUStore(device=DEVICE)
    with _bad(TypeError, "key must be a hashable tuple"):
        gpu.put([1, 2], torch.zeros(1))
    with _bad(TypeError, "key must be a hashable tuple"):
        gpu.put((1, [2]), torch.zeros(1))
    with _bad(TypeError, "tensor must be a torch.Tensor"):
        gpu.put((1,), [1.0, 2.0])
    with DiskStore(tmp_path / "d2", device=DEVICE) as disk:
        with _bad(TypeError, "cannot be stored on disk; allowed: .*torch.bfloat16"):
            disk.put((1,), torch.zeros(2, dtype=torch.complex128))
    with _bad(TypeError, "tiers must be a list of"):
        TieredStore("gpu")
    with _bad(ValueError, "at least one"):
        TieredStore([])
    with _bad(TypeError, r"tiers\[0\] must be a \(store, budget_bytes \| None\) pair"):
        TieredStore([gpu])
    with _bad(TypeError, r"tiers\[0\] store must be a CacheStore"):
        TieredStore([(object(), None)])
    with _bad(ValueError, r"tiers\[1\] budget must be a positive int"):
        TieredStore([(GPUStore(device=DEVICE), 10), (CPUStore(device=DEVICE), 0)])
    with _bad(TypeError, r"tiers\[0\] budget must be a positive int"):
        TieredStore([(GPUStore(device=DEVICE), "1MB")])
    with _bad(ValueError, r"tiers\[1\] store is already tier 0"):
        TieredStore([(gpu, 10), (gpu, 20)])
    with _bad(ValueError, r"tiers\[0\] store has its own budget=10"):
        TieredStore([(GPUStore(device=DEVICE, budget=10), None)])
    gpu.put((0,), torch.zeros(1))
    with _bad(ValueError, r"tiers\[0\] store must start empty"):
        TieredStore([(gpu, None)])
    with _bad(TypeError, "promote must be True or False"):
        TieredStore([(CPUStore(device=DEVICE), None)], promote="yes")


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_host_buffers_round_trip(tmp_path, dtype):
    # Past 2 MB, host buffers come from numpy (huge-page advice); check every dtype and layout there.
    numel = (3 << 20) // dtype.itemsize
    with CPUStore(device=DEVICE) as cpu, DiskStore(tmp_path / "d", device=DEVICE) as disk:
        for layout in ("contiguous", "transposed", "strided"):
            value = make_tensor(dtype, numel, layout, seed=numel)
            for store in (cpu, disk):
                store.put((layout,), value)
                assert bits_equal(store.get((layout,)), value) and store.nbytes == held_bytes(store)
