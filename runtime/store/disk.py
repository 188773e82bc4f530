"""DiskStore: one safetensors file per entry, written atomically and verified on every read."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import time
import weakref
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import torch

from edit.runtime.store._checks import check_bool, check_key, check_tensor
from edit.runtime.store._device import consume_staged, resolve_device, side_stream, stage_on, to_device
from edit.runtime.store._entryfile import DTYPE_NAMES, MAX_KEY_REPR, EntryRecord, read_entry, write_entry
from edit.runtime.store._home import StoreHome, scan
from edit.runtime.store.base import Key, SingleTierStore

#: Names of in-progress writes; anything left with this prefix is debris of a crash.
TEMP_PREFIX = ".edit-tmp-"
TEMP_SUFFIX = ".tmp"
SUFFIX = ".safetensors"


@attrs.frozen
class _Loaded:
    """A verified read: the host tensor and, for a cuda prefetch, its staged device copy."""

    host: torch.Tensor
    staged: torch.Tensor | None = None
    arrived: "torch.cuda.Event | None" = None


@attrs.frozen
class _Pending:
    """A prefetch in flight, tied to the index record it was started for."""

    record: EntryRecord
    future: Future[_Loaded | None]


class DiskStore(SingleTierStore):
    """Keeps each entry in its own safetensors file under ``directory``.

    ``put`` writes a temp file in the same directory and renames it into place, so a reader sees the
    old file, the new one, or none; the payload carries a chunked CRC32 checked on every read. A file
    that is missing, cut short, corrupted, foreign, or that disagrees with the index (key, dtype,
    shape) reads as a miss and is removed. Write errors (ENOSPC, EIO, ...) make ``put`` return False,
    leaving the store usable and its accounting exact. ``prefetch`` reads on a thread pool (then
    starts the device copy on a side stream under CUDA); ``get`` waits only for what is still missing.

    ``fsync=True`` makes each write durable before the rename; off by default since the cache lives
    no longer than the process and the CRC already rejects torn files.

    Each store keeps its files in its own subfolder of ``directory`` (``folder``), owned through a
    lock (see ``_home``): stores sharing a directory, in one process or several, are independent,
    and a store opening the directory removes the folders of stores whose process died or that
    could not delete their files. ``close()`` removes the folder unless ``keep=True`` (then it stays,
    marked kept, until the user removes it). A reopened store starts empty. A removed folder is
    recreated by the next ``put``; anything but a regular file at an entry's path (a FIFO, a
    directory, a symlink, a device) reads as a miss without being opened for I/O, and the next
    ``put`` of that key replaces it. Keys go into the file's header by ``repr``: a key whose repr
    fails or is longer than ``MAX_KEY_REPR`` characters is refused by ``put`` (ValueError).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, DiskStore(tmp, device="cpu") as store:
    ...     store.put(("gen0", 3, "uncond", 1), torch.full((2, 3), 0.5, dtype=torch.bfloat16))
    ...     store.get(("gen0", 3, "uncond", 1)).float().sum().item()
    True
    3.0
    """

    def __init__(self, directory: str | os.PathLike, device: str | torch.device | None = None,
                 keep: bool = False, max_workers: int = 2, fsync: bool = False) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike; got {type(directory).__name__}")
        if not os.fspath(directory):  # Path('') would silently mean the current directory
            raise ValueError("directory must be a non-empty path; got ''")
        check_bool(keep, "keep")
        check_bool(fsync, "fsync")
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be a positive int; got {type(max_workers).__name__}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be a positive int; got {max_workers}")
        self.device = resolve_device(device)
        self.directory = Path(directory)
        self._home = StoreHome(self.directory)  # raises ValueError naming the directory and the reason
        self.keep = keep
        self.fsync = fsync
        self._pin = self.device.type == "cuda"
        self._stream = side_stream(self.device)
        self._io = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edit-disk-io")
        self._crc = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edit-disk-crc")
        super().__init__()
        self._owners: dict[str, Key] = {}  # live path -> key, so keys with equal reprs get distinct files
        self._pending: dict[Key, _Pending] = {}
        self._closed = False
        self._temp_ids = itertools.count()
        # A store that is never closed still releases its threads, its lock and (unless keep) its files.
        self._finalizer = weakref.finalize(self, _release, self._io, self._crc, self._home, keep)

    @property
    def folder(self) -> Path:
        """This store's own subfolder of ``directory``, where its files are."""
        return self._home.folder

    @property
    def swept(self) -> int:
        """How many folders of dead stores this store removed when it opened ``directory``."""
        return self._home.swept

    def validate_key(self, key: Key) -> str:
        """Check ``key`` as ``put`` will and return its repr; ValueError names what is wrong."""
        check_key(key)
        try:
            key_repr = repr(key)
        except Exception as err:
            raise ValueError(f"key: DiskStore needs the key's repr (it is written into the file and checked "
                             f"on read), and repr() raised {type(err).__name__}: {err}") from None
        if not isinstance(key_repr, str) or len(key_repr) > MAX_KEY_REPR:
            size = len(key_repr) if isinstance(key_repr, str) else type(key_repr).__name__
            raise ValueError(f"key: its repr has {size} characters; DiskStore keys need a repr of at most "
                             f"{MAX_KEY_REPR} characters (it is written into each file's header)")
        return key_repr

    def put(self, key: Key, tensor: torch.Tensor) -> bool:
        """Write ``tensor`` to its own file; False (and nothing stored) when the write fails."""
        key_repr = self.validate_key(key)
        check_tensor(tensor)
        if not self.accepts(tensor):
            raise TypeError(f"tensor dtype {tensor.dtype} cannot be stored on disk; allowed: "
                            + ", ".join(sorted(str(d) for d in DTYPE_NAMES)))
        with self._lock:
            if self._closed:
                raise ValueError("DiskStore is closed; put needs an open store")
            self._remove(key)  # an old value must never outlive a put, even a failed one
        host = tensor.detach()
        if host.device.type != "cpu":
            host = host.to("cpu")
        host = host.resolve_conj().resolve_neg().contiguous()
        start = time.perf_counter()
        temp = None
        for attempt in range(2):
            temp = self.folder / f"{TEMP_PREFIX}{os.getpid()}-{next(self._temp_ids)}{TEMP_SUFFIX}"
            try:
                crcs = write_entry(str(temp), host, key_repr, self._crc, self.fsync)
                break
            except FileNotFoundError:  # the folder was removed from under us: make a new one, once
                if attempt or not self._recreate_folder():
                    return self._write_failed(temp)
            except OSError:
                return self._write_failed(temp)
        elapsed = time.perf_counter() - start
        with self._lock:
            if self._closed:
                _unlink_quietly(temp)
                return False
            self._remove(key)  # a concurrent put of the same key may have committed meanwhile
            path = self._path_for(key, key_repr)
            try:
                _replace(temp, path)
            except OSError:
                return self._write_failed(temp, locked=True)
            self._entries[key] = EntryRecord(path, key_repr, host.dtype, tuple(host.shape), host.nbytes, crcs)
            self._owners[path] = key
            self._nbytes += host.nbytes
            self._counters.puts += 1
            self._counters.transfer_seconds += elapsed
        return True

    def get(self, key: Key) -> torch.Tensor | None:
        """The verified value on ``device``, or None (a bad file is removed)."""
        with self._lock:
            record = self._entries.get(key)
            if record is None:
                self._counters.misses += 1
                return None
            pending = self._pending.pop(key, None)
            if pending is not None:
                if pending.future.done():
                    self._counters.prefetch_hits += 1
                else:
                    self._counters.late_waits += 1
        start = time.perf_counter()
        try:
            loaded = pending.future.result() if pending is not None else self._load(record, stage=False)
        except CancelledError:  # close() cancelled the prefetch before it ran
            loaded = self._load(record, stage=False)
        if pending is not None:
            with self._lock:
                self._counters.late_wait_seconds += time.perf_counter() - start
        with self._lock:
            if loaded is None:
                self._counters.misses += 1
                self._forget_unreadable(key, record)
                return None
            self._counters.hits += 1
            self._counters.transfer_seconds += time.perf_counter() - start
        if loaded.staged is not None:
            return consume_staged(loaded.staged, loaded.arrived)
        return to_device(loaded.host, self.device)

    def peek(self, key: Key) -> torch.Tensor | None:
        """The verified value in host memory (no device copy, no accounting)."""
        with self._lock:
            record = self._entries.get(key)
        if record is None:
            return None
        loaded = self._load(record, stage=False)
        if loaded is None:
            with self._lock:
                self._forget_unreadable(key, record)
            return None
        return loaded.host

    def prefetch(self, key: Key) -> None:
        """Start reading ``key`` on the thread pool; no-op when absent or already in flight."""
        with self._lock:
            record = self._entries.get(key)
            if self._closed or record is None or key in self._pending:
                return
            self._counters.prefetches += 1
            self._pending[key] = _Pending(record, self._io.submit(self._load, record, True))

    def path(self, key: Key) -> Path | None:
        """The file holding ``key`` (for inspection), or None."""
        with self._lock:
            record = self._entries.get(key)
        return None if record is None else Path(record.path)

    def accepts(self, tensor: torch.Tensor) -> bool:
        """Only dtypes that safetensors can describe go to disk."""
        return tensor.dtype in DTYPE_NAMES

    def remove_temp_files(self) -> int:
        """Delete temp files of interrupted writes in this store's folder; returns how many were removed.

        (Those of a dead store go with its whole folder when the next store opens the directory.)
        """
        return _remove_temp_files(self.folder)

    def close(self) -> None:
        """Cancel prefetches, stop the threads, and remove this store's files unless ``keep``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for pending in self._pending.values():
                pending.future.cancel()
            self._pending.clear()
            self._entries.clear()
            self._owners.clear()
            self._nbytes = 0
        self._finalizer.detach()
        self._io.shutdown(wait=True, cancel_futures=True)
        self._crc.shutdown(wait=True, cancel_futures=True)
        _release_home(self._home, self.keep)

    def _load(self, record: EntryRecord, stage: bool) -> _Loaded | None:
        host = read_entry(record, self._pin, self._crc)
        if host is None:
            return None
        if stage and self._stream is not None:
            staged, arrived = stage_on(self._stream, host, self.device)
            return _Loaded(host, staged, arrived)
        return _Loaded(host)

    def _recreate_folder(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            if not self._home.exists():
                try:
                    self._home.create()
                except ValueError:
                    return False
            return True

    def _forget_unreadable(self, key: Key, record: EntryRecord) -> None:
        # Only remove the file if it still belongs to the record we read: a concurrent put may have
        # replaced it, and that newer file must survive.
        if self._entries.get(key) is record:
            self._remove(key)
            self._counters.errors += 1

    def _write_failed(self, temp: Path, locked: bool = False) -> bool:
        _unlink_quietly(temp)
        if locked:
            self._counters.rejected += 1
            self._counters.errors += 1
        else:
            with self._lock:
                self._counters.rejected += 1
                self._counters.errors += 1
        return False

    def _path_for(self, key: Key, key_repr: str) -> str:
        digest = hashlib.blake2b(key_repr.encode("utf-8", "backslashreplace"), digest_size=16).hexdigest()
        path = str(self.folder / f"{digest}{SUFFIX}")
        suffix = 0
        while self._owners.get(path, key) != key:  # a different key with the same repr owns it
            suffix += 1
            path = str(self.folder / f"{digest}-{suffix}{SUFFIX}")
        return path

    def _remove(self, key: Any) -> bool:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending.future.cancel()  # if already running, its result is simply never used
        record = self._entries.pop(key, None)
        if record is None:
            return False
        self._owners.pop(record.path, None)
        self._nbytes -= record.nbytes
        _unlink_quietly(record.path)
        return True


def _unlink_quietly(path: str | os.PathLike) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0


def _replace(temp: Path, path: str) -> None:
    """Rename ``temp`` onto ``path``; a directory squatting there is removed first (it is inside the
    store's own folder, so it can only be debris)."""
    try:
        os.replace(temp, path)
    except OSError as err:
        if err.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(path, ignore_errors=True)
        os.replace(temp, path)


def _remove_temp_files(folder: Path) -> int:
    removed = 0
    for entry in scan(folder):
        if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
            removed += _unlink_quietly(entry.path)
    return removed


def _release_home(home: StoreHome, keep: bool) -> None:
    if keep:
        _remove_temp_files(home.folder)  # debris of failed writes is never worth keeping
    home.release(remove=not keep)


def _release(io: ThreadPoolExecutor, crc: ThreadPoolExecutor, home: StoreHome, keep: bool) -> None:
    """Finalizer of an unclosed store: stop its threads and give up its folder."""
    io.shutdown(wait=False, cancel_futures=True)
    crc.shutdown(wait=False, cancel_futures=True)
    _release_home(home, keep)
