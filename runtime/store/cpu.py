"""CPUStore: host copies of device tensors, pinned and copied on a side CUDA stream when CUDA exists."""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from edit.runtime.store._checks import check_bool, check_key, check_tensor
from edit.runtime.store._device import (consume_staged, empty_host, host_copy, resolve_device, side_stream, stage_on,
                                        to_device)
from edit.runtime.store.base import Key, SingleTierStore


@attrs.define
class _HostEntry:
    """A host copy; ``ready`` is the event of its device-to-host copy (None when it was synchronous)."""

    host: torch.Tensor
    ready: "torch.cuda.Event | None" = None

    def wait_on_host(self) -> torch.Tensor:
        if self.ready is not None:
            self.ready.synchronize()
        return self.host


@attrs.define
class _Staged:
    """A prefetched device copy of an entry; ``entry`` pins which value it was staged from."""

    entry: _HostEntry
    tensor: torch.Tensor
    arrived: "torch.cuda.Event | None"


class CPUStore(SingleTierStore):
    """Keeps a contiguous host copy per entry; ``get`` copies it back to ``device``.

    With CUDA, copies run on a side stream into pinned memory: ``put`` returns once the device-to-host
    copy is queued (the source is protected with ``record_stream``), and ``get``/``prefetch`` make the
    consumer stream wait on an event rather than blocking the host. Without CUDA (or with
    ``device="cpu"``) ``pin_memory`` is ignored and copies are plain memcpys; ``get`` then returns the
    held host tensor (read-only by contract).

    >>> store = CPUStore(device="cpu")
    >>> store.put((0, 1), torch.arange(4))
    True
    >>> store.get((0, 1)).tolist(), store.nbytes
    ([0, 1, 2, 3], 32)
    """

    def __init__(self, pin_memory: bool = True, device: str | torch.device | None = None) -> None:
        check_bool(pin_memory, "pin_memory")
        self.device = resolve_device(device)
        # Pinned memory only helps copies to a cuda device; silently off otherwise.
        self.pin_memory = pin_memory and self.device.type == "cuda"
        self._stream = side_stream(self.device)
        super().__init__()
        self._staged: dict[Key, _Staged] = {}

    def put(self, key: Key, tensor: torch.Tensor) -> bool:
        """Copy ``tensor`` to host memory (asynchronously from a cuda tensor)."""
        check_key(key)
        check_tensor(tensor)
        with self._lock:
            self._remove(key)
        copied = self._copy_in(lambda: self._copy_to_host(tensor.detach()))
        if copied is None:
            return False
        entry, elapsed = copied
        with self._lock:
            self._insert(key, entry, entry.host.nbytes, elapsed)
        return True

    def get(self, key: Key) -> torch.Tensor | None:
        """The value on ``device``; uses (and waits only for) a prefetched copy when there is one."""
        with self._lock:
            entry = self._lookup(key)
            if entry is None:
                return None
            staged = self._staged.pop(key, None)
            if staged is not None:
                arrived = staged.arrived is None or staged.arrived.query()
                if arrived:
                    self._counters.prefetch_hits += 1
                else:
                    self._counters.late_waits += 1
        if staged is not None:
            if staged.arrived is None:
                return staged.entry.wait_on_host()
            return consume_staged(staged.tensor, staged.arrived)
        if self.device.type == "cpu":
            return entry.wait_on_host()
        start = time.perf_counter()
        current = torch.cuda.current_stream(self.device)
        if entry.ready is not None:
            current.wait_event(entry.ready)  # the device-to-host copy must land before we read it back
        out = to_device(entry.host, self.device)
        with self._lock:
            self._counters.transfer_seconds += time.perf_counter() - start
        return out

    def peek(self, key: Key) -> torch.Tensor | None:
        """The host copy (waiting for its copy to finish), for moves to a lower tier."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry.wait_on_host()

    def prefetch(self, key: Key) -> None:
        """Queue the host-to-device copy on the side stream; ``get`` then waits on its event."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or key in self._staged:
                return
            self._counters.prefetches += 1
            if self._stream is None:
                # The host is the device: the entry is already where get will return it.
                self._staged[key] = _Staged(entry, entry.host, None)
                return
        tensor, arrived = stage_on(self._stream, entry.host, self.device, after=entry.ready)
        with self._lock:
            # Only keep the staged copy if the entry was not replaced or dropped meanwhile.
            if self._entries.get(key) is entry and key not in self._staged:
                self._staged[key] = _Staged(entry, tensor, arrived)

    def close(self) -> None:
        """Release all host copies and staged device copies."""
        with self._lock:
            self._entries.clear()
            self._staged.clear()
            self._nbytes = 0

    def _copy_to_host(self, tensor: torch.Tensor) -> _HostEntry:
        host = empty_host(tensor.shape, tensor.dtype, pin=self.pin_memory)
        if not tensor.is_cuda:
            host_copy(host, tensor)
            return _HostEntry(host)
        stream = self._stream if tensor.device == self.device else side_stream(tensor.device)
        # The copy must start after the producer's kernels, and the source must outlive the copy.
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(stream):
            host.copy_(tensor, non_blocking=self.pin_memory)
            ready = torch.cuda.Event()
            ready.record(stream)
        tensor.record_stream(stream)
        return _HostEntry(host, ready)

    def _remove(self, key: Any) -> bool:
        self._staged.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._nbytes -= entry.host.nbytes
        return True
