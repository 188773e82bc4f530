"""Writing the CLI's files so that a user never loses one: into a temporary file in the target folder,
read back and checked, then renamed over the target. On any failure, or an interrupt, the temporary
file is removed and a file already at the target is left exactly as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
import warnings
from pathlib import Path

TEMP_PREFIX = ".edit-part-"
PROBE_PREFIX = ".edit-probe-"


class OutputError(Exception):
    """A file could not be written; ``flag`` is the option that named it."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_target(path: Path, flag: str) -> None:
    """Refuse, before any work, a target that cannot be written: a folder that is missing or that
    refuses new files (tried for real: permission bits, read-only mounts and /proc all show), or
    something other than a regular file in the way."""
    folder = _folder(path)
    if not folder.is_dir():
        raise OutputError(flag, f"folder {str(folder)!r} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise OutputError(flag, f"cannot use {str(path)!r}: {_reason(err)}") from None
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputError(flag, f"{str(path)!r} is {kind}")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=PROBE_PREFIX, suffix=path.suffix)
    except OSError as err:
        raise OutputError(flag, f"cannot create files in {str(folder)!r}: {_reason(err)}") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def _interrupts_held():
    """Hold SIGINT over a few statements, so a Ctrl-C lands after them: never between a temporary
    file's creation and the `try` that removes it (the moment the file appears is when a user's,
    or a test's, interrupt is likeliest to land on the writing). Main thread only, where Python's
    handler runs; elsewhere a no-op."""
    held = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if held else None
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _temp_file(path: Path, flag: str):
    temp = None
    try:
        with _interrupts_held():
            try:
                fd, temp = tempfile.mkstemp(dir=_folder(path), prefix=TEMP_PREFIX, suffix=path.suffix)
            except OSError as err:
                raise OutputError(flag, f"cannot create files in {str(_folder(path))!r}: {_reason(err)}") from None
            os.close(fd)
        os.chmod(temp, _mode_for(path))
        yield Path(temp)
    finally:
        if temp is not None:
            with _interrupts_held(), contextlib.suppress(FileNotFoundError):
                os.unlink(temp)


def _mode_for(path: Path) -> int:
    """The target's own mode when replacing a file, else what a plain open() would have given
    (mkstemp makes files private)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_video(frames, path: Path, fps: int, flag: str = "--out") -> None:
    """Write uint8 frames (F, H, W, 3) as .mp4 (ffmpeg) or .gif (Pillow), atomically and checked."""
    with _temp_file(path, flag) as temp:
        try:
            (_encode_gif if path.suffix.lower() == ".gif" else _encode_mp4)(frames, temp, fps)
        except (KeyboardInterrupt, OutputError):
            raise
        except Exception as err:  # the encoders raise OSError, RuntimeError, BrokenPipeError, ...
            raise OutputError(flag, f"cannot write {str(path)!r}: {_reason(err)}") from None
        count, size = _read_back(temp, path.suffix.lower(), fps)
        expected = (len(frames), (frames.shape[2], frames.shape[1]))
        if (count, size) != expected:
            raise OutputError(flag, f"cannot write {str(path)!r}: the encoded file reads back as {count} frames "
                                    f"of {size[0]}x{size[1]}, not {expected[0]} of {expected[1][0]}x{expected[1][1]} "
                                    "(disk full?)")
        _commit(temp, path, flag)


def _encode_gif(frames, temp: Path, fps: int) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(temp, format="GIF", save_all=True, append_images=images[1:], duration=_gif_ms(fps), loop=0)


def _gif_ms(fps: int) -> int:
    return round(1000 / fps)


def _encode_mp4(frames, temp: Path, fps: int) -> None:
    import imageio.v2 as imageio

    # ffmpeg's own errors would go to stderr unread; the read-back below is what decides.
    imageio.mimwrite(temp, list(frames), format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1,
                     output_params=["-loglevel", "quiet"])


def _read_back(temp: Path, suffix: str, fps: int) -> tuple[int, tuple[int, int]]:
    """(frames, (width, height)) as a reader sees the file; (0, (0, 0)) when it cannot be read."""
    try:
        if suffix == ".gif":
            from PIL import Image

            with Image.open(temp) as image:
                # Pillow merges identical consecutive frames into one longer frame, so count by time,
                # in the GIF's own unit (centiseconds: a 62 ms frame is stored as 60 ms).
                unit = _gif_ms(fps) // 10 * 10
                total = 0
                for index in range(image.n_frames):
                    image.seek(index)
                    total += image.info.get("duration", unit)
                return (round(total / unit) if unit else image.n_frames), image.size
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(temp))
        meta = next(reader)
        count = sum(1 for _ in reader)
        return count, tuple(meta["size"])
    except Exception:  # any unreadable file is a failed write
        return 0, (0, 0)


def _commit(temp: Path, path: Path, flag: str) -> None:
    try:
        os.replace(temp, path)
    except OSError as err:
        raise OutputError(flag, f"cannot write {str(path)!r}: {_reason(err)}") from None


def write_plan(plan, path: Path, level: str, flag: str = "--plan", trace=None,
               steps=None) -> tuple[Path, str | None]:
    """Render the plan (and its DOT source next to it) atomically; returns the main file written and
    a note when graphviz's `dot` was missing (then only the source is written)."""
    from edit.graph import render

    folder = _folder(path)
    staging = None
    try:
        with _interrupts_held():
            try:
                staging = Path(tempfile.mkdtemp(dir=folder, prefix=TEMP_PREFIX))
            except OSError as err:
                raise OutputError(flag, f"cannot create files in {str(folder)!r}: {_reason(err)}") from None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                made = render(plan, staging / path.name, level=level, steps=steps,
                              **({} if trace is None else {"trace": trace}))
            except (KeyboardInterrupt, OutputError):
                raise
            except Exception as err:
                raise OutputError(flag, f"cannot write {str(path)!r}: {_reason(err)}") from None
        files = sorted(staging.iterdir())
        for file in files:
            _check_drawing(file, path, flag)
        for file in files:  # the image last, so it never appears without its source
            if file != made:
                _commit(file, folder / file.name, flag)
        _commit(made, folder / made.name, flag)
        note = None
        if any("not found" in str(w.message) for w in caught):
            note = f"graphviz `dot` not found on PATH: wrote only the DOT source (install graphviz to draw {path.name})"
        return folder / made.name, note
    finally:
        if staging is not None:
            with _interrupts_held():
                shutil.rmtree(staging, ignore_errors=True)


_SIGNATURES = {".dot": (b"digraph",), ".svg": (b"<?xml", b"<svg", b"<!--"), ".png": (b"\x89PNG",), ".pdf": (b"%PDF",)}


def _check_drawing(file: Path, target: Path, flag: str) -> None:
    try:
        with open(file, "rb") as handle:
            head = handle.read(64)
    except OSError as err:
        raise OutputError(flag, f"cannot write {str(target)!r}: {_reason(err)}") from None
    if not head.lstrip().startswith(_SIGNATURES.get(file.suffix.lower(), (b"",))):
        raise OutputError(flag, f"cannot write {str(target)!r}: {file.name} came out empty or damaged")
