"""Plan files on disk: a reader that never blocks on what is not a regular file, and an atomic writer
that keeps a replaced file's mode and leaves no temp file behind (not even after a SIGKILL, once
the folder is written or read again). Errors name the file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The largest plan file read (a 50-step x 40-block per-block plan is about 3 MB).
MAX_BYTES = 256 << 20
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class PlanFileError(ValueError):
    """A plan file that cannot be read as a plan, or a path that cannot hold one; the message names
    the file and what is wrong."""


def _what(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_text(path: Path) -> str:
    """The file's text. Opened without blocking (a FIFO with no writer would hang a plain open) and
    refused unless it is a regular file of at most `MAX_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PlanFileError(f"path: no plan file {str(path)!r}") from None
    except OSError as err:
        raise PlanFileError(f"{path}: cannot open it ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PlanFileError(f"{path}: is {_what(info.st_mode)}, not a plan file")
        if info.st_size > MAX_BYTES:
            raise PlanFileError(f"{path}: {info.st_size:,} bytes, more than a plan file holds ({MAX_BYTES:,})")
        chunks, total = [], 0
        while True:  # a /proc file says size 0 and streams: read to the cap, no further
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_BYTES:
                raise PlanFileError(f"{path}: more than {MAX_BYTES:,} bytes, more than a plan file holds")
            chunks.append(chunk)
    except OSError as err:
        raise PlanFileError(f"{path}: cannot read it ({err.strerror})") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as err:
        raise PlanFileError(f"{path}: not a JSON plan file (not UTF-8 text: {err.reason})") from None


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def sweep_temps(path: Path) -> None:
    """Remove temp files that writers of `path` left when they were killed (their pid is gone)."""
    folder = path.parent if str(path.parent) else Path(".")
    prefix = _temp_prefix(path)
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(folder / name)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically: a temp file named after this process in the same folder,
    then a rename. A replaced file keeps its mode; a new one gets the umask's (as `open` does)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PlanFileError(f"{path}: is a directory; give a file name for the plan")
    sweep_temps(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    except OSError as err:
        raise PlanFileError(f"{path}: cannot replace it ({err.strerror})") from None
    tmp = folder / f"{_temp_prefix(path)}{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            if err.errno == errno.ENOSPC:
                reason = "no space left on the device"
            raise OSError(err.errno, f"{path}: could not write the plan ({reason}); the old file, if any, is "
                                     "unchanged") from None
        raise
    return path
