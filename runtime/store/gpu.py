"""GPUStore: entries stay on the compute device as tensor references (put and get cost nothing)."""

from __future__ import annotations

from typing import Any

import torch

from edit.runtime.store._checks import check_budget, check_key, check_tensor
from edit.runtime.store._device import resolve_device
from edit.runtime.store.base import Key, SingleTierStore


def owns_exactly(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` is a dense view of its whole storage, so holding it costs exactly ``nbytes``."""
    if tensor.storage_offset() != 0 or tensor.untyped_storage().nbytes() != tensor.nbytes:
        return False
    # Dense and non-overlapping: the strides, sorted, are those of some contiguous layout.
    expected = 1
    for stride, size in sorted((st, n) for st, n in zip(tensor.stride(), tensor.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class GPUStore(SingleTierStore):
    """Holds device tensors by reference, least-recently-used first out when over ``budget``.

    The store keeps a reference to the (detached) tensor it is given rather than a copy: residuals are
    fresh tensors, so the caller must not modify a tensor in place after putting it, nor a tensor that
    ``get`` returned. A view into a larger buffer (a slice) is copied instead, so the bytes accounted
    are the bytes actually kept alive. Tensors on another device are copied to ``device``.

    >>> store = GPUStore(device="cpu", budget=1024)
    >>> store.put(("gen0", 0, "cond", 0), torch.ones(64))
    True
    >>> store.nbytes, store.get(("gen0", 0, "cond", 0)).sum().item()
    (256, 64.0)
    """

    def __init__(self, device: str | torch.device | None = None, budget: int | None = None) -> None:
        self.device = resolve_device(device)
        self.budget = check_budget(budget, "budget")
        super().__init__()

    def put(self, key: Key, tensor: torch.Tensor) -> bool:
        """Keep ``tensor`` (by reference when possible); evicts LRU entries to stay within ``budget``."""
        check_key(key)
        check_tensor(tensor)
        with self._lock:
            # An old value must never outlive a put, whether or not the new one is stored.
            self._remove(key)
            if self.budget is not None and tensor.nbytes > self.budget:
                self._counters.rejected += 1
                return False
        copied = self._copy_in(lambda: self._adopt(tensor))
        if copied is None:
            return False
        held, elapsed = copied
        with self._lock:
            self._insert(key, held, held.nbytes, elapsed)
            while self.budget is not None and self._nbytes > self.budget:
                _, victim = self._entries.popitem(last=False)
                self._nbytes -= victim.nbytes
                self._counters.evictions += 1
        return True

    def get(self, key: Key) -> torch.Tensor | None:
        """The held tensor itself (read-only by contract), or None."""
        with self._lock:
            return self._lookup(key)

    def peek(self, key: Key) -> torch.Tensor | None:
        """The held tensor, without touching LRU order or counters."""
        with self._lock:
            return self._entries.get(key)

    def prefetch(self, key: Key) -> None:
        """Nothing to do: entries already live on the device."""

    def close(self) -> None:
        """Drop every reference."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _adopt(self, tensor: torch.Tensor) -> torch.Tensor:
        held = tensor.detach()  # never keep an autograd graph alive through the cache
        if held.device != self.device:
            return held.to(self.device, non_blocking=held.is_pinned())
        if not owns_exactly(held):
            return held.clone(memory_format=torch.contiguous_format)
        return held

    def _remove(self, key: Any) -> bool:
        held = self._entries.pop(key, None)
        if held is None:
            return False
        self._nbytes -= held.nbytes
        return True
