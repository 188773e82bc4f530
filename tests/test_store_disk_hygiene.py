"""DiskStore hygiene: what dead stores leave is swept, nothing at an entry path can hang a read,
stores sharing a directory stay independent, and keys or directories it cannot use are refused."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch

from edit.runtime.store import DiskStore, GPUStore, TieredStore
from edit.runtime.store import _home
from edit.runtime.store._entryfile import MAX_KEY_REPR

CHILD = r"""
import sys, torch
from edit.runtime.store import DiskStore
store = DiskStore(sys.argv[1], device="cpu")
for i in range(3):
    store.put(("kept", i), torch.full((1000,), float(i)))
print(store.folder, flush=True)
i = 0
while True:  # keep writing until killed, so the kill lands in the middle of a put
    store.put(("churn", i % 5), torch.full((1 << 20,), float(i)))
    i += 1
"""


def _names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_killed_process_leaves_files_that_the_next_store_removes(tmp_path):
    root = tmp_path / "shared"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        folder = child.stdout.readline().strip()
        assert folder, "the child store did not start"
        time.sleep(0.3)  # a few churning puts: the kill lands mid-write or between writes
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    left = _names(folder)
    assert sum(name.endswith(".safetensors") for name in left) >= 3 and "owner.lock" in left
    with DiskStore(root, device="cpu") as store:
        assert store.swept == 1 and not os.path.exists(folder)
        assert _names(root) == [store.folder.name] and _names(store.folder) == ["owner.lock"]


def test_files_a_store_could_not_remove_at_close_are_swept_later(tmp_path, monkeypatch):
    store = DiskStore(tmp_path, device="cpu")
    store.put((1,), torch.ones(4))
    folder = store.folder
    monkeypatch.setattr(_home.shutil, "rmtree", lambda *a, **k: None)  # as on a read-only mount
    store.close()
    monkeypatch.undo()
    assert (folder / "owner.lock").exists() and len(_names(folder)) == 2
    with DiskStore(tmp_path, device="cpu") as later:
        assert later.swept == 1 and not folder.exists()


def test_a_live_store_and_a_kept_folder_are_never_swept(tmp_path):
    kept = DiskStore(tmp_path, device="cpu", keep=True)
    kept.put((1,), torch.ones(4))
    kept.close()
    with DiskStore(tmp_path, device="cpu") as live, DiskStore(tmp_path, device="cpu") as other:
        assert live.swept == other.swept == 0
        assert sorted(_names(tmp_path)) == sorted([kept.folder.name, live.folder.name, other.folder.name])
        assert (kept.folder / _home.KEPT_NAME).exists()


def _make_fifo(path):
    os.mkfifo(path)


def _make_directory(path):
    os.mkdir(path)
    (path / "inside").write_bytes(b"x")  # a non-empty one: rename cannot replace it


def _make_symlink(path, target=None):
    target = path.parent / "elsewhere"
    target.write_bytes(b"not an entry")
    os.symlink(target, path)


def _make_device(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


def _within(seconds: float, fn):
    """fn()'s result, failing the test (instead of hanging it) if fn blocks."""
    box = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn} blocked for more than {seconds} s"
    return box[0]


@pytest.mark.parametrize("make", [_make_fifo, _make_directory, _make_symlink, _make_device],
                         ids=["fifo", "directory", "symlink", "device"])
@pytest.mark.parametrize("read", ["get", "prefetch_then_close"])
def test_a_non_regular_file_at_an_entry_path_is_a_miss_and_gets_replaced(tmp_path, make, read):
    store = DiskStore(tmp_path / "d", device="cpu")
    try:
        store.put(("k",), torch.arange(6.0))
        path = store.path(("k",))
        path.unlink()
        make(path)
        if read == "prefetch_then_close":
            store.prefetch(("k",))
            _within(10, store.close)  # close waits for the in-flight read, which must not block
            return
        assert _within(10, lambda: store.get(("k",))) is None
        assert ("k",) not in store and store.stats.errors == 1
        assert store.put(("k",), torch.arange(3.0)) and store.path(("k",)) == path
        assert stat.S_ISREG(os.lstat(path).st_mode) and store.get(("k",)).tolist() == [0.0, 1.0, 2.0]
    finally:
        _within(10, store.close)


def test_a_removed_directory_is_recreated_by_the_next_put(tmp_path):
    import shutil

    root = tmp_path / "cache"
    with DiskStore(root, device="cpu") as store:
        store.put(("a",), torch.ones(2))
        shutil.rmtree(root)
        assert store.get(("a",)) is None  # its file went with the directory
        assert store.put(("b",), torch.full((2,), 7.0)) and store.get(("b",)).tolist() == [7.0, 7.0]
        assert store.folder.parent == root and (store.folder / "owner.lock").exists()
        with DiskStore(root, device="cpu") as neighbour:  # the new folder is owned: not swept
            assert neighbour.swept == 0
        assert store.get(("b",)).tolist() == [7.0, 7.0]
    assert _names(root) == []


def test_two_stores_on_one_directory_are_independent(tmp_path):
    a, b = DiskStore(tmp_path, device="cpu"), DiskStore(tmp_path, device="cpu")
    assert a.folder != b.folder
    errors, wrong = [], []

    def churn(store, value, lane):
        # Both stores use the same keys; within a store each thread has its own (a put racing a get
        # of the same key in one store may legitimately make the get miss).
        try:
            for i in range(300):
                key = ("shared", lane, i % 7)
                store.put(key, torch.full((64,), value))
                got = store.get(key)
                if got is None or got[0].item() != value:
                    wrong.append((value, i))
        except Exception as err:  # any exception is a spurious failure
            errors.append(err)

    threads = [threading.Thread(target=churn, args=args) for args in ((a, 1.0, 0), (b, 2.0, 0), (a, 1.0, 1), (b, 2.0, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and wrong == []
    assert sorted(a.keys()) == sorted(b.keys()) == [("shared", lane, i) for lane in (0, 1) for i in range(7)]
    a.close()  # closing one leaves the other's files alone
    assert all(b.get(key)[0].item() == 2.0 for key in b.keys())
    b.close()
    assert _names(tmp_path) == []


class _BadRepr:
    def __repr__(self):
        raise RuntimeError("no repr")

    def __hash__(self):
        return 1


def test_keys_it_cannot_file_are_refused_at_put(tmp_path):
    with DiskStore(tmp_path, device="cpu") as store:
        with pytest.raises(ValueError, match=r"key: .*repr\(\) raised RuntimeError: no repr"):
            store.put((_BadRepr(),), torch.ones(1))
        huge = ("x" * (MAX_KEY_REPR + 1),)
        with pytest.raises(ValueError, match=rf"key: its repr has {MAX_KEY_REPR + 6} characters; .*at most {MAX_KEY_REPR}"):
            store.put(huge, torch.ones(1))
        assert len(store) == 0 and store.put(("x" * (MAX_KEY_REPR - 5),), torch.ones(1))  # the limit itself fits
        assert store.get(("x" * (MAX_KEY_REPR - 5),)).tolist() == [1.0]
    # In a tiered store the key would only reach the disk at a spill: it is refused up front instead.
    with TieredStore([(GPUStore(device="cpu"), 4), (DiskStore(tmp_path / "t", device="cpu"), None)]) as tiers:
        with pytest.raises(ValueError, match="key: its repr has"):
            tiers.put(huge, torch.ones(1))
        assert len(tiers) == 0


def test_directories_it_cannot_use_are_refused_naming_them(tmp_path):
    with pytest.raises(ValueError, match="directory must be a non-empty path"):
        DiskStore("")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"'.*/file/sub' is a file or lies under one"):
        DiskStore(tmp_path / "file" / "sub")
    with pytest.raises(ValueError, match=r"directory '/proc/edit-cache': cannot create a store folder in it: "):
        DiskStore("/proc/edit-cache")
    assert os.listdir(tmp_path) == ["file"]
