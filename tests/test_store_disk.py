"""DiskStore: the file format, every way a file can go bad, write faults, crashes and prefetch."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore
from edit.runtime.store import disk as disk_module
from edit.runtime.store._entryfile import CHUNK_BYTES
from edit.runtime.store._home import KEPT_NAME, LOCK_NAME
from test_store_util import DTYPES, bits_equal, held_bytes, make_tensor


@pytest.fixture
def store(tmp_path):
    made = DiskStore(tmp_path / "cache", device="cpu")
    yield made
    made.close()


def _files(folder) -> list[str]:
    """The entry and temp files in a store's folder (its lock file aside)."""
    return sorted(name for name in os.listdir(folder) if name != LOCK_NAME)


@pytest.mark.parametrize("dtype", DTYPES)
def test_files_are_standard_safetensors_with_key_and_checksum(store, dtype):
    value = make_tensor(dtype, 12, "transposed", seed=5)
    store.put(("gen", 2, "cond", 7), value)
    path = store.path(("gen", 2, "cond", 7))
    assert path.suffix == ".safetensors" and path.parent == store.folder and store.folder.parent == store.directory
    assert bits_equal(load_file(path)["residual"], value.contiguous())  # readable by safetensors itself
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["key"] == repr(("gen", 2, "cond", 7)) and len(meta["crc32"]) == 8
    assert meta["shape"] == "4,3"


def test_filenames_are_a_stable_hash_of_the_key(tmp_path):
    with DiskStore(tmp_path / "a", device="cpu") as a, DiskStore(tmp_path / "b", device="cpu") as b:
        a.put((1, "x"), torch.zeros(1))
        b.put((1, "x"), torch.ones(1))
        a.put((2, "x"), torch.zeros(1))
        assert a.path((1, "x")).name == b.path((1, "x")).name != a.path((2, "x")).name


def test_keys_with_equal_reprs_get_distinct_files(store):
    nan_a, nan_b = (float("nan"),), (float("nan"),)  # unequal keys, identical repr
    store.put(nan_a, torch.zeros(2))
    store.put(nan_b, torch.ones(2))
    assert store.path(nan_a) != store.path(nan_b)
    assert store.get(nan_a).tolist() == [0.0, 0.0] and store.get(nan_b).tolist() == [1.0, 1.0]


def test_multi_chunk_entries_round_trip_through_get_and_prefetch(store):
    value = make_tensor(torch.bfloat16, (2 * CHUNK_BYTES + 1000) // 2, seed=9)  # three checksum chunks
    store.put(("big",), value)
    assert bits_equal(store.get(("big",)), value)
    store.prefetch(("big",))
    assert bits_equal(store.get(("big",)), value)
    assert store.stats.prefetches == 1 and store.stats.prefetch_hits + store.stats.late_waits == 1


def _corrupt(kind: str, path, other_path, value: torch.Tensor) -> None:
    data = path.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    if kind == "bitflip":
        middle = header_end + (len(data) - header_end) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:])
    elif kind == "truncate":
        path.write_bytes(data[:-3])
    elif kind == "truncate_header":
        path.write_bytes(data[:20])
    elif kind == "zero_length":
        path.write_bytes(b"")
    elif kind == "garbage_header":
        path.write_bytes(b"\xff" * 8 + data[8:])
    elif kind == "foreign":
        save_file({"weights": torch.randn(4)}, str(path))
    elif kind == "missing":
        path.unlink()
    elif kind in ("other_dtype", "other_shape"):
        with safe_open(path, "pt") as f:
            metadata = f.metadata()  # same key and checksums: only the tensor description differs
        other = value.view(torch.int16) if kind == "other_dtype" else value.reshape(2, -1)
        save_file({"residual": other.contiguous()}, str(path), metadata=metadata)
    elif kind == "other_key":
        path.write_bytes(other_path.read_bytes())  # a valid entry, but of another key
    else:
        raise ValueError(kind)


FAULTS = ["bitflip", "truncate", "truncate_header", "zero_length", "garbage_header", "foreign", "missing",
          "other_dtype", "other_shape", "other_key"]


@pytest.mark.parametrize("via_prefetch", [False, True], ids=["get", "prefetch"])
@pytest.mark.parametrize("kind", FAULTS)
def test_a_bad_file_is_a_miss_and_is_removed(store, kind, via_prefetch):
    values = {(0, i): make_tensor(torch.float16, 64, seed=i) for i in range(3)}
    for key, value in values.items():
        store.put(key, value)
    victim = store.path((0, 1))
    _corrupt(kind, victim, store.path((0, 2)), values[(0, 1)])
    if via_prefetch:
        store.prefetch((0, 1))
    assert store.get((0, 1)) is None
    assert not victim.exists() and (0, 1) not in store
    assert store.nbytes == 2 * 128 == held_bytes(store) and store.stats.errors == 1
    assert bits_equal(store.get((0, 0)), values[(0, 0)]) and bits_equal(store.get((0, 2)), values[(0, 2)])
    assert store.put((0, 1), values[(0, 1)]) and bits_equal(store.get((0, 1)), values[(0, 1)])


@pytest.mark.parametrize("found_by", ["get", "peek", "spill"])
def test_a_bad_file_found_inside_a_tiered_store_is_forgotten_by_it(tmp_path, found_by):
    # For the spill case the disk is the middle tier, so moving its entry down has to read the file.
    tiers = TieredStore([(GPUStore(device="cpu"), 64), (DiskStore(tmp_path / "d", device="cpu"), 64),
                         (CPUStore(device="cpu"), None)])
    tiers.put(("a",), torch.zeros(16))
    tiers.put(("b",), torch.zeros(16))  # a -> disk
    _corrupt("bitflip", tiers.stores[1].path(("a",)), None, None)
    if found_by == "spill":
        tiers.put(("c",), torch.zeros(16))  # b -> disk, a (unreadable) -> lost instead of moved
    else:
        assert getattr(tiers, found_by)(("a",)) is None
    assert ("a",) not in tiers and tiers.stats.tiers[1].lost == 1
    assert tiers.tier_bytes == [s.nbytes for s in tiers.stores] == [64, 64 if found_by == "spill" else 0, 0]
    assert _files(tiers.stores[1].folder) == ([tiers.stores[1].path(("b",)).name] if found_by == "spill" else [])
    tiers.close()
    with pytest.raises(ValueError, match="closed"):
        tiers.put(("d",), torch.zeros(1))


def _fail_writes(monkeypatch, code: int, after_bytes: int = 0) -> None:
    """Make os.pwrite fail with ``code`` once ``after_bytes`` have been written (a disk filling up)."""
    real, written = os.pwrite, [0]

    def pwrite(fd, data, offset):
        room = after_bytes - written[0]
        if room <= 0:
            raise OSError(code, os.strerror(code))
        n = real(fd, memoryview(data)[:room], offset)
        written[0] += n
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("after_bytes", [0, 100])
def test_write_errors_drop_the_put_and_leave_the_store_usable(store, monkeypatch, code, after_bytes):
    store.put(("kept",), torch.ones(8))
    store.put(("replaced",), torch.ones(8))
    _fail_writes(monkeypatch, code, after_bytes)
    assert store.put(("new",), torch.ones(64)) is False
    assert store.put(("replaced",), torch.zeros(64)) is False  # the old value must not survive either
    assert ("new",) not in store and ("replaced",) not in store and store.get(("replaced",)) is None
    assert store.nbytes == 32 == held_bytes(store) and store.stats.errors == 2 and store.stats.rejected == 2
    assert _files(store.folder) == [store.path(("kept",)).name]  # no temp files left behind
    monkeypatch.undo()
    assert store.put(("new",), torch.ones(64)) and store.get(("new",)).sum().item() == 64


def test_a_failed_rename_drops_the_put(store, monkeypatch):
    def refuse(*args):
        raise OSError(errno.EIO, "rename failed")

    monkeypatch.setattr(os, "replace", refuse)
    assert store.put(("a",), torch.ones(4)) is False
    assert _files(store.folder) == [] and store.nbytes == 0
    monkeypatch.undo()
    assert store.put(("a",), torch.ones(4))


class _Crash(BaseException):
    """Stands for the process dying: nothing in the store may catch it."""


def test_a_crash_between_write_and_rename_leaves_no_readable_torn_entry(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    store = DiskStore(directory, device="cpu", keep=True)
    store.put(("old",), torch.ones(4))

    def crash(*args):
        raise _Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(_Crash):
        store.put(("torn",), torch.ones(4))
    monkeypatch.undo()
    folder = store.folder
    temps = [name for name in _files(folder) if name.startswith(disk_module.TEMP_PREFIX)]
    assert len(temps) == 1  # the debris a crash leaves ...
    assert store.get(("torn",)) is None and ("torn",) not in store
    store.close()  # ... is removed even when the entries are kept
    assert [n for n in _files(folder) if n.startswith(disk_module.TEMP_PREFIX)] == []
    assert len(_files(folder)) == 2  # the kept entry and the `kept` marker
    reopened = DiskStore(directory, device="cpu")
    assert len(reopened) == 0 and reopened.get(("old",)) is None  # a reopened store starts empty
    reopened.close()
    assert os.listdir(directory) == [folder.name]  # a kept folder is the user's to remove


def test_tiered_store_evicts_an_entry_the_disk_cannot_take(tmp_path, monkeypatch):
    tiers = TieredStore([(GPUStore(device="cpu"), 128), (CPUStore(device="cpu"), 64),
                         (DiskStore(tmp_path / "d", device="cpu"), None)])
    _fail_writes(monkeypatch, errno.ENOSPC)
    for name in "abc":
        assert tiers.put((name,), torch.ones(16))  # 64 bytes each
    assert [tiers.tier_of((n,)) for n in "abc"] == [1, 0, 0]
    assert tiers.put(("d",), torch.ones(16))  # a cannot go to disk: evicted, b -> cpu
    assert tiers.tier_of(("a",)) is None and tiers.tier_of(("b",)) == 1
    assert tiers.stats.tiers[1].evictions == 1 and tiers.stores[2].stats.errors == 1
    assert tiers.put(("wide",), torch.ones(64)) is False  # 256 B fits only on disk, which is full
    assert tiers.tier_bytes == [128, 64, 0] == [s.nbytes for s in tiers.stores]
    assert _files(tiers.stores[2].folder) == []
    monkeypatch.undo()
    assert tiers.put(("e",), torch.ones(16)) and tiers.tier_of(("b",)) == 2  # the disk works again
    assert tiers.get(("b",)).sum().item() == 16
    tiers.close()


def test_close_removes_the_files_unless_keep(tmp_path):
    with DiskStore(tmp_path / "gone", device="cpu") as store:
        store.put((1,), torch.ones(3))
        store.put((2,), torch.ones(3))
        store.drop((2,))
        assert len(_files(store.folder)) == 1
    assert os.listdir(tmp_path / "gone") == []  # the store's folder went with its files
    kept = DiskStore(tmp_path / "kept", device="cpu", keep=True)
    kept.put((1,), torch.ones(3))
    kept.close()
    names = _files(kept.folder)
    assert KEPT_NAME in names and len([n for n in names if n.endswith(".safetensors")]) == 1 and kept.nbytes == 0
    with pytest.raises(ValueError, match="closed"):
        kept.put((2,), torch.ones(1))
    assert kept.get((1,)) is None


def test_an_unclosed_store_still_cleans_up_when_collected(tmp_path):
    store = DiskStore(tmp_path / "c", device="cpu")
    store.put((1,), torch.ones(3))
    del store
    import gc

    gc.collect()
    assert os.listdir(tmp_path / "c") == []


def _gated_reads(monkeypatch) -> threading.Event:
    """Hold every disk read until the returned event is set."""
    gate, real = threading.Event(), disk_module.read_entry

    def read_entry(*args, **kwargs):
        assert gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(disk_module, "read_entry", read_entry)
    return gate


def test_get_waits_only_for_a_prefetch_that_has_not_arrived(store, monkeypatch):
    store.put(("a",), torch.arange(10.0))
    store.put(("b",), torch.arange(5.0))
    store.prefetch(("a",))
    deadline = time.monotonic() + 10
    while not store._pending[("a",)].future.done():  # internal: the read has landed
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert store.get(("a",)).tolist() == list(range(10)) and store.stats.prefetch_hits == 1
    gate = _gated_reads(monkeypatch)
    store.prefetch(("b",))
    threading.Timer(0.05, gate.set).start()
    assert store.get(("b",)).tolist() == list(range(5)) and store.stats.late_waits == 1


def test_a_prefetch_never_returns_stale_or_dropped_data(store, monkeypatch):
    store.put(("k",), torch.zeros(4))
    gate = _gated_reads(monkeypatch)
    store.prefetch(("k",))
    store.prefetch(("k",))  # already in flight: no second read
    assert store.stats.prefetches == 1
    store.put(("k",), torch.ones(4))  # replaces the entry while its old read is in flight
    store.prefetch(("gone",))  # missing: a no-op
    gate.set()
    assert store.get(("k",)).tolist() == [1.0] * 4
    gate.clear()
    store.prefetch(("k",))
    store.drop(("k",))  # dropping an entry with a read in flight
    gate.set()
    assert store.get(("k",)) is None and store.nbytes == 0
