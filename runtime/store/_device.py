"""Device resolution and the CUDA stream plumbing the stores share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def resolve_device(device: Any = None) -> torch.device:
    """Map ``None`` to cuda when available (else cpu); accept only cpu and cuda devices that exist."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be None, a str or a torch.device; got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be None, 'cpu' or 'cuda[:N]'; got {device!r} ({exc})") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device must be None, 'cpu' or 'cuda[:N]'; got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} needs CUDA, which is not available here; allowed: None or 'cpu'")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device {device!r}: cuda index must be in [0, {torch.cuda.device_count()})")
    return torch.device("cuda", index)


def side_stream(device: torch.device) -> "torch.cuda.Stream | None":
    """A dedicated copy stream for a cuda device, so transfers overlap the compute stream; None on cpu."""
    if device.type != "cuda":
        return None
    return torch.cuda.Stream(device=device)


_HUGE_PAGE_BYTES = 2 << 20


def empty_host(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """A contiguous host buffer; pinned when asked, so host-to-device copies can be asynchronous.

    Unpinned buffers come from numpy, which advises transparent huge pages for large arrays: first
    touch of a fresh 64 MB buffer then costs a few hundred page faults instead of 16k (~4x faster here).
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if pin or nbytes < _HUGE_PAGE_BYTES:
        return torch.empty(tuple(shape), dtype=dtype, pin_memory=pin)
    return torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).view(dtype).reshape(tuple(shape))


def host_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy a cpu tensor into a contiguous host buffer of the same shape and dtype.

    Contiguous sources are copied as bytes by one memcpy (numpy): torch's copy_ splits large copies
    over its intra-op threads, which stalls for milliseconds whenever another process holds a core.
    """
    if src.is_contiguous() and not src.is_conj() and not src.is_neg():
        np.copyto(bytes_of(dst), bytes_of(src))
    else:
        dst.copy_(src)


def bytes_of(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous cpu tensor as a uint8 array sharing its memory (any dtype)."""
    # as_strided, not reshape: a "contiguous" tensor may carry an odd stride on a size-1 dim.
    return tensor.as_strided((tensor.numel(),), (1,)).view(torch.uint8).numpy()


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` on the current stream; asynchronous when the source is pinned.

    Freeing a pinned source right after is safe: the CUDA host allocator holds the block until the
    copy's stream passes it.
    """
    if device.type == "cpu":
        return host
    return host.to(device, non_blocking=host.is_pinned())


def stage_on(stream: "torch.cuda.Stream", host: torch.Tensor, device: torch.device,
             after: "torch.cuda.Event | None" = None) -> tuple[torch.Tensor, "torch.cuda.Event"]:
    """Start a host-to-device copy on ``stream``; returns the device tensor and the event marking its arrival.

    The consumer must ``wait_event`` on the event and ``record_stream`` the tensor on its own stream,
    because the tensor's memory belongs to ``stream`` (see :func:`consume_staged`).
    """
    with torch.cuda.stream(stream):
        if after is not None:
            stream.wait_event(after)
        dev = host.to(device, non_blocking=host.is_pinned())
        event = torch.cuda.Event()
        event.record(stream)
    return dev, event


def consume_staged(dev: torch.Tensor, event: "torch.cuda.Event") -> torch.Tensor:
    """Make the current stream wait (on the GPU, not the host) for a staged copy, and hand the tensor over."""
    current = torch.cuda.current_stream(dev.device)
    current.wait_event(event)
    # The block was allocated on the side stream: tell the allocator the compute stream uses it too.
    dev.record_stream(current)
    return dev
