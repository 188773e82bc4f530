"""A DiskStore's own folder inside a shared directory, owned through a lock on a file in it.

Files outlive the process that wrote them, and several stores (of one process or many) may be
given the same directory. So each store writes only inside its own subfolder and holds an
exclusive ``flock`` on ``owner.lock`` there for its whole life. The kernel drops that lock when the
owner dies, however it dies (SIGKILL included), so a store opening the directory can tell debris
from a live neighbour: a sibling folder whose lock it can take has no owner and is removed.

A folder without ``owner.lock`` is never touched: it is either being set up (the lock file appears,
already locked, by an atomic rename) or was closed with ``keep=True`` (the lock file is renamed to
``kept``), and removing it is then the user's call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

PREFIX = "edit-store-"
LOCK_NAME = "owner.lock"
KEPT_NAME = "kept"
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


class HomeError(ValueError):
    """The directory cannot hold a store (the message names it and says why)."""


class StoreHome:
    """Creates, owns, recreates and finally removes one store's subfolder of ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder: Path | None = None
        self._fd: int | None = None
        self.swept = 0
        self.create()
        self.swept = sweep(root, keep=self.folder.name)

    def create(self) -> None:
        """Make a fresh owned folder (again, if the old one was removed from under the store)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self.root))
            # Lock under a temporary name, then rename: a sweeper never sees an unlocked owner.lock.
            staging = folder / ".owner.lock.new"
            fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o644)
        except (FileExistsError, NotADirectoryError):
            raise HomeError(f"directory must be a directory path; {str(self.root)!r} is a file "
                            "or lies under one") from None
        except OSError as err:
            raise HomeError(f"directory {str(self.root)!r}: cannot create a store folder in it: "
                            f"{err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.rename(staging, folder / LOCK_NAME)
        except OSError as err:
            os.close(fd)
            shutil.rmtree(folder, ignore_errors=True)
            raise HomeError(f"directory {str(self.root)!r}: cannot lock a store folder in it: "
                            f"{err.strerror or err}") from None
        old, self._fd, self.folder = self._fd, fd, folder
        if old is not None:
            os.close(old)

    def exists(self) -> bool:
        try:
            return stat.S_ISDIR(os.lstat(self.folder).st_mode)
        except OSError:
            return False

    def release(self, remove: bool) -> None:
        """Give the folder up: remove it, or (``remove=False``) mark it kept. Idempotent."""
        if self._fd is None:
            return
        if remove:
            shutil.rmtree(self.folder, ignore_errors=True)  # what stays is swept once the lock is gone
        else:
            try:
                os.rename(self.folder / LOCK_NAME, self.folder / KEPT_NAME)
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None


def scan(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder``; none when it cannot be listed (gone, or unreadable)."""
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def sweep(root: Path, keep: str | None = None) -> int:
    """Remove the store folders under ``root`` whose owner is gone; returns how many."""
    removed = 0
    for entry in scan(root):
        if entry.name == keep or not entry.name.startswith(PREFIX):
            continue
        if entry.is_dir(follow_symlinks=False) and _unowned(Path(entry.path)):
            removed += 1
    return removed


def _unowned(folder: Path) -> bool:
    """Take ``folder``'s lock if its owner is gone and remove the folder while holding it."""
    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | _FLAGS)
    except OSError:
        return False  # no lock file: being set up, or kept
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False  # a live owner
            raise
        # The owner may have renamed the lock to `kept` between our open and our lock.
        now = os.lstat(lock)
        if (now.st_ino, now.st_dev) != (os.fstat(fd).st_ino, os.fstat(fd).st_dev):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
