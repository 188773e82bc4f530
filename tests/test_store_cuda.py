"""CUDA paths: pinned asynchronous copies on side streams, events, record_stream, staged prefetches.

Skipped without CUDA (the CPU-only runs exercise the same logic with the CPU as the device).
"""

from __future__ import annotations

import pytest
import torch

from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore
from test_store_model import churn
from test_store_util import DTYPES, LAYOUTS, bits_equal, make_tensor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
MB = 1 << 20


def _slow_residual(nbytes: int, fill: float) -> torch.Tensor:
    """A device tensor produced behind a long matmul, so copies queued after it really are in flight."""
    a = torch.randn(4096, 4096, device="cuda")
    busy = a @ a @ a  # several ms of work on the current stream
    return torch.full((nbytes // 4,), fill, device="cuda") + busy[0, 0] * 0


def test_defaults_pick_cuda_and_pinned_memory(tmp_path):
    assert GPUStore().device.type == CPUStore().device.type == DiskStore(tmp_path).device.type == "cuda"
    assert CPUStore().pin_memory is True and CPUStore(pin_memory=False).pin_memory is False


@pytest.mark.parametrize("pin", [True, False])
def test_freed_source_is_not_reused_before_the_copy_has_read_it(pin):
    store = CPUStore(pin_memory=pin)
    for i in range(4):
        x = _slow_residual(64 * MB, float(i))
        store.put((i,), x)
        del x  # without record_stream the allocator could hand this block out right away ...
        torch.full((16 * MB,), -1.0, device="cuda")  # ... to this, which would overwrite it mid-copy
    assert store.peek((0,)).is_pinned() is pin
    for i in range(4):
        got = store.get((i,))
        assert got.is_cuda and bool((got == float(i)).all())


def test_get_and_prefetch_on_another_stream_see_the_right_data():
    store = CPUStore()
    values = {i: make_tensor(DTYPES[i % len(DTYPES)], 4096, LAYOUTS[i % len(LAYOUTS)], seed=i).cuda()
              for i in range(12)}
    for i, value in values.items():
        store.put((i,), value)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for i in range(0, 12, 2):
            store.prefetch((i,))
        got = {i: store.get((i,)) for i in values}
    side.synchronize()
    assert all(bits_equal(got[i], values[i]) and got[i].is_cuda for i in values)
    stats = store.stats
    assert stats.prefetches == 6 and stats.prefetch_hits + stats.late_waits == 6


@pytest.mark.parametrize("dtype", DTYPES)
def test_disk_store_round_trips_cuda_tensors_with_and_without_prefetch(tmp_path, dtype):
    with DiskStore(tmp_path / "d") as store:
        values = {i: make_tensor(dtype, 3 * MB // dtype.itemsize, LAYOUTS[i], seed=i).cuda() for i in range(3)}
        for i, value in values.items():
            store.put((i,), value)
        store.prefetch((1,))
        store.prefetch((2,))
        for i, value in values.items():
            got = store.get((i,))
            assert got.device.type == "cuda" and bits_equal(got, value)
        assert store.stats.prefetch_hits + store.stats.late_waits == 2


def test_tiered_spills_in_flight_copies_correctly(tmp_path):
    # Budgets of one entry per tier: each put pushes the previous entries one tier down while their
    # device-to-host copies may still be running; the disk write must wait for them.
    entry = 32 * MB
    store = TieredStore([(GPUStore(), entry), (CPUStore(), entry), (DiskStore(tmp_path / "d"), 2 * entry)])
    for i in range(5):
        store.put((i,), _slow_residual(entry, float(i)))
    assert [store.tier_of((i,)) for i in range(5)] == [None, 2, 2, 1, 0]
    for i in range(1, 5):
        store.prefetch((i,))
    for i in (1, 2, 3, 4):
        got = store.get((i,))
        assert got.is_cuda and bool((got == float(i)).all()), i
    assert store.tier_bytes == [entry, entry, 2 * entry]
    store.close()


@pytest.mark.parametrize("seed", [0, 1])
def test_tiered_store_matches_a_dict_on_cuda(seed):
    churn(seed, ops=1500, device="cuda")
