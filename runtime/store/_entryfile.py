"""One cache entry as one safetensors file, with a chunked CRC32 of the payload in its metadata.

Layout (standard safetensors): 8-byte little-endian header length, a JSON header padded with spaces
to a multiple of 8, then the raw tensor bytes. The header's ``__metadata__`` records the key, dtype,
shape and one CRC32 per ``CHUNK_BYTES`` of payload; a read is accepted only if the whole header equals
the one expected from the store's index and every chunk's CRC matches, so a truncated, corrupted,
foreign or mismatched file can only ever be a miss. CRCs are per chunk so they can be computed on a
helper thread while the previous chunk is written or the next one read (zlib releases the GIL).
"""

from __future__ import annotations

import json
import os
import stat
import zlib
from concurrent.futures import Executor
from typing import Callable

import attrs
import torch

from edit.runtime.store._device import bytes_of, empty_host

TENSOR_NAME = "residual"
FORMAT = "edit.store/1"
CHUNK_BYTES = 4 << 20
# A header lists one 8-hex-digit CRC per chunk, so 1 MiB covers entries of hundreds of GB.
MAX_HEADER_BYTES = 1 << 20
#: Longest key repr a file may carry: JSON may escape each character to 6 bytes, and the CRC list of a
#: large entry needs room too, so this keeps every header far inside MAX_HEADER_BYTES.
MAX_KEY_REPR = 1 << 16

#: torch dtypes a disk entry can hold, with their safetensors names.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
for _name, _tag in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):  # the unsigned wide dtypes are recent additions to torch
        DTYPE_NAMES[getattr(torch, _name)] = _tag


@attrs.frozen
class EntryRecord:
    """What the index knows about one file: everything a read must find again in it."""

    path: str
    key_repr: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    crcs: tuple[int, ...]


class _ShortRead(ValueError):
    """The file ended before the payload did (a truncated file)."""


def byte_view(tensor: torch.Tensor) -> memoryview:
    """A writable view of a contiguous cpu tensor's bytes (any dtype, bfloat16 and bool included)."""
    return memoryview(bytes_of(tensor))


def header_bytes(key_repr: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int,
                 crcs: tuple[int, ...]) -> bytes:
    """The length prefix plus padded JSON header; its size depends only on key, dtype, shape and nbytes."""
    text = json.dumps(_header_object(key_repr, dtype, shape, nbytes, crcs), separators=(",", ":"))
    raw = text.encode("ascii")  # json.dumps escapes non-ASCII, so the length is independent of the CRCs
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_entry(path: str, tensor: torch.Tensor, key_repr: str, crc_pool: Executor | None,
                fsync: bool) -> tuple[int, ...]:
    """Write ``tensor`` (contiguous, on cpu) to a new file at ``path``; returns the chunk CRCs.

    The payload goes first, behind a placeholder header of the final size; the real header (with the
    CRCs) is written last, so a file cut short anywhere fails verification. Raises OSError on failure,
    leaving ``path`` for the caller to remove.
    """
    shape = tuple(tensor.shape)
    view = byte_view(tensor)
    placeholder = header_bytes(key_repr, tensor.dtype, shape, len(view), (0,) * _chunk_count(len(view)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        crcs = _write_payload(fd, len(placeholder), view, crc_pool)
        header = header_bytes(key_repr, tensor.dtype, shape, len(view), crcs)
        _pwrite_all(fd, memoryview(header), 0)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return crcs


def read_entry(record: EntryRecord, pin: bool, crc_pool: Executor | None) -> torch.Tensor | None:
    """Read and verify ``record``'s file into a new host tensor; None when anything does not match."""
    # Anything but a regular file is a miss without being read: a FIFO would block the read (and
    # close() behind it) forever, a device could have side effects. lstat first, so a FIFO or device
    # is never even opened; O_NOFOLLOW | O_NONBLOCK and fstat cover a swap between lstat and open.
    try:
        if not stat.S_ISREG(os.lstat(record.path).st_mode):
            return None
        fd = os.open(record.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        size = info.st_size
        prefix = os.pread(fd, 8, 0)
        if len(prefix) != 8:
            return None
        header_len = int.from_bytes(prefix, "little")
        if not 0 < header_len <= MAX_HEADER_BYTES or 8 + header_len + record.nbytes != size:
            return None
        header = json.loads(os.pread(fd, header_len, 8))
        expected = _header_object(record.key_repr, record.dtype, record.shape, record.nbytes, record.crcs)
        if header != expected:
            return None
        out = empty_host(record.shape, record.dtype, pin)
        crcs = _read_payload(fd, 8 + header_len, byte_view(out), crc_pool)
        return out if crcs == record.crcs else None
    except (OSError, ValueError):  # ValueError covers bad JSON, bad UTF-8 and short reads
        return None
    finally:
        os.close(fd)


def _header_object(key_repr: str, dtype: torch.dtype, shape: tuple[int, ...], nbytes: int,
                   crcs: tuple[int, ...]) -> dict:
    tag = DTYPE_NAMES[dtype]
    metadata = {
        "format": FORMAT,
        "key": key_repr,
        "dtype": tag,
        "shape": ",".join(map(str, shape)),
        "chunk_bytes": str(CHUNK_BYTES),
        "crc32": ",".join(f"{crc:08x}" for crc in crcs),
    }
    return {"__metadata__": metadata,
            TENSOR_NAME: {"dtype": tag, "shape": list(shape), "data_offsets": [0, nbytes]}}


def _chunk_count(nbytes: int) -> int:
    return -(-nbytes // CHUNK_BYTES)


def _chunks(view: memoryview):
    for start in range(0, len(view), CHUNK_BYTES):
        yield start, view[start:start + CHUNK_BYTES]


def _write_payload(fd: int, offset: int, view: memoryview, crc_pool: Executor | None) -> tuple[int, ...]:
    # The helper checksums chunk i while this thread writes it; zlib and os.pwrite both release the GIL.
    pending = []
    for start, chunk in _chunks(view):
        pending.append(_checksum(chunk, crc_pool if len(view) > CHUNK_BYTES else None))
        _pwrite_all(fd, chunk, offset + start)
    return tuple(result() for result in pending)


def _read_payload(fd: int, offset: int, view: memoryview, crc_pool: Executor | None) -> tuple[int, ...]:
    # The helper checksums chunk i while this thread reads chunk i + 1.
    pending = []
    for start, chunk in _chunks(view):
        _pread_all(fd, chunk, offset + start)
        pending.append(_checksum(chunk, crc_pool if len(view) > CHUNK_BYTES else None))
    return tuple(result() for result in pending)


def _checksum(chunk: memoryview, pool: Executor | None) -> Callable[[], int]:
    """CRC32 of ``chunk``, on ``pool`` when given; returns a callable yielding the value."""
    if pool is not None:
        try:
            return pool.submit(zlib.crc32, chunk).result
        except RuntimeError:
            pass  # the pool is shutting down (the store is closing): checksum inline instead
    crc = zlib.crc32(chunk)
    return lambda: crc


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise _ShortRead("file ended before the payload")
        view, offset = view[got:], offset + got
