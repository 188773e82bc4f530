"""Helpers shared by the store tests (this module holds no tests)."""

from __future__ import annotations

import os

import torch

from edit.runtime.store import CacheStore

#: The dtypes every test sweeps: the brief's list, bfloat16 first because numpy cannot hold it.
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.bool, torch.uint8]
LAYOUTS = ["contiguous", "matrix", "transposed", "strided", "offset"]


def bits_equal(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if a is None or a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_bytes(a), _bytes(b))


def _bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.cpu().contiguous()
    return t.as_strided((t.numel(),), (1,)).view(torch.uint8)


def make_tensor(dtype: torch.dtype, numel: int, layout: str = "contiguous", seed: int = 0) -> torch.Tensor:
    """A seeded tensor of ``numel`` elements in one of LAYOUTS (three of which are non-contiguous)."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        values = torch.randn(max(numel, 1) * 2, generator=g) * 100
        values[:4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0])[: len(values[:4])]
        values = values[torch.randperm(len(values), generator=g)].to(dtype)
    elif dtype is torch.bool:
        values = torch.randint(0, 2, (max(numel, 1) * 2,), generator=g).bool()
    else:
        info = torch.iinfo(dtype)
        low, high = max(info.min, -(2 ** 62)), min(info.max, 2 ** 62)
        values = torch.randint(low, high, (max(numel, 1) * 2,), generator=g, dtype=torch.int64).to(dtype)
    rows = next((r for r in (4, 3, 2) if numel % r == 0 and numel > r), 1)
    cols = numel // rows
    if layout == "contiguous":
        return values[:numel].clone()
    if layout == "matrix":
        return values[:numel].clone().reshape(rows, cols)
    if layout == "transposed":
        return values[:numel].clone().reshape(cols, rows).t()
    if layout == "strided":
        return values[: 2 * numel : 2] if numel else values[:0]
    if layout == "offset":
        return values[numel: 2 * numel].reshape(rows, cols) if numel else values[:0]
    raise ValueError(f"unknown layout {layout!r}")


def held_bytes(store: CacheStore) -> int:
    """Bytes actually held, recomputed from the stored tensors themselves."""
    return sum(store.peek(key).nbytes for key in store.keys())


def open_fds() -> int | None:
    """Open file descriptors of this process (Linux), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
