"""Quality of a generated video against a reference (e.g. a cached run against the uncached one).

PSNR and SSIM come from torchmetrics rather than being written here: they are easy to get subtly
wrong (window, padding, data range, reduction), and a figure this project reports should be the
figure anyone else computes with the same library. The temporal measure is ours, because caching
artefacts show up as frozen or jerky motion, which a per-frame metric cannot see.

>>> import numpy as np
>>> from edit.metrics import compare
>>> video = np.linspace(0.2, 0.8, 5 * 16 * 16 * 3).reshape(5, 16, 16, 3)
>>> result = compare(video + 0.1, video)
>>> round(result["psnr"], 4), result["frames"], round(result["temporal"], 12)
(20.0, 5, 0.0)
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

#: torchmetrics' SSIM pads each frame by half its 11-pixel Gaussian window with reflection, which
#: needs a side longer than that half; smaller frames would fail inside torch with a padding error.
MIN_SIDE = 6
READ_SUFFIXES = (".mp4", ".gif")
SSIM_FRAMES = 4


def _checked(value: Any, name: str) -> torch.Tensor:
    """`value` as a CPU tensor once its type and shape are right, or the error naming `name`."""
    if isinstance(value, np.ndarray):
        if value.dtype not in (np.uint8, np.float16, np.float32, np.float64):  # what torch can take
            raise TypeError(f"{name}: expected uint8, float16, float32 or float64 values, got dtype {value.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype != torch.uint8 and not value.dtype.is_floating_point:
            raise TypeError(f"{name}: expected uint8 or floating values, got dtype {value.dtype}")
        tensor = value.detach()  # moved to the CPU once every check has passed
    else:
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")
    if tensor.ndim != 4:
        hint = " (one video, e.g. pipe(...).frames[0])" if tensor.ndim == 5 else ""
        raise ValueError(f"{name}: expected 4 dims (frames, height, width, 3){hint}, got shape {tuple(tensor.shape)}")
    if tensor.shape[-1] != 3:
        raise ValueError(f"{name}: expected 3 channels (RGB) in the last dim, got shape {tuple(tensor.shape)}")
    frames, height, width = tensor.shape[:3]
    if frames == 0 or min(height, width) < MIN_SIDE:
        raise ValueError(f"{name}: expected at least 1 frame of at least {MIN_SIDE}x{MIN_SIDE} pixels (SSIM's "
                         f"window), got shape {tuple(tensor.shape)}")
    return tensor


def _unit_float(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """`tensor` as float64 in [0, 1], or the error naming `name` for values that are not."""
    if tensor.dtype == torch.uint8:
        return tensor.cpu().double() / 255.0
    tensor = tensor.cpu().double()
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: has non-finite values (NaN or inf)")
    low, high = tensor.min().item(), tensor.max().item()
    if low < 0.0 or high > 1.0:  # data_range=1.0 below would then misstate every figure
        raise ValueError(f"{name}: floating values must lie in [0, 1], got [{low:g}, {high:g}]")
    return tensor


def compare(video: Any, reference: Any) -> dict:
    """How close `video` is to `reference`.

    Both are videos shaped (frames, height, width, 3), as numpy arrays or torch tensors: floats in
    [0, 1] (diffusers' `output_type="np"` frames) or uint8 in [0, 255] (a decoded file), each
    converted to float64 in [0, 1] on its own, so a uint8 video compares with a float one. Both
    are checked before anything is computed: a TypeError or ValueError names the argument.

    Returns a dict:

    - ``psnr``: PSNR in dB over the whole video, ``10 * log10(1 / MSE)`` with the MSE over every
      pixel and channel of every frame (torchmetrics, data_range=1.0); ``inf`` when identical.
      torchmetrics converts its natural log to dB with a float32 ``ln(10)``, so the figure is
      good to about 1e-7 relative (1e-6 dB) even though the inputs are float64.
    - ``ssim``: the mean over frames of each frame's SSIM (torchmetrics'
      structural_similarity_index_measure on (frames, 3, H, W), data_range=1.0, its default 11x11
      Gaussian window with sigma 1.5); 1.0 when identical.
    - ``temporal``: the RMSE between the two videos' frame-to-frame differences,
      ``sqrt(mean((video[t+1] - video[t] - (reference[t+1] - reference[t]))**2))`` over all t,
      pixels and channels: 0.0 when the motion matches (a constant offset leaves it at 0), larger
      when the video freezes or jumps where the reference moves smoothly. ``None`` for 1 frame.
    - ``per_frame``: ``{"psnr": [...], "ssim": [...]}``, one value per frame, and ``"temporal"``,
      one RMSE per pair of consecutive frames (item t is between frames t and t + 1).
    - ``frames``: the number of frames.
    """
    test, ref = _checked(video, "video"), _checked(reference, "reference")
    if test.shape != ref.shape:
        raise ValueError(f"video and reference differ in shape: video {tuple(test.shape)}, "
                         f"reference {tuple(ref.shape)}")
    test, ref = _unit_float(test, "video"), _unit_float(ref, "reference")
    # torchmetrics' image metrics take (N, C, H, W).
    test_nchw, ref_nchw = test.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    psnr = peak_signal_noise_ratio(test_nchw, ref_nchw, data_range=1.0)
    frame_psnr = peak_signal_noise_ratio(test_nchw, ref_nchw, data_range=1.0, reduction="none", dim=(1, 2, 3))
    # A few frames at a time: SSIM holds about ten float64 copies of its input, which for a full-size
    # Wan clip (81 frames of 832x480) would be gigabytes.
    chunks = range(0, len(test), SSIM_FRAMES)
    frame_ssim = torch.cat([structural_similarity_index_measure(test_nchw[i:i + SSIM_FRAMES], ref_nchw[i:i + SSIM_FRAMES],
                                                                data_range=1.0, reduction="none") for i in chunks])
    motion_error = (test[1:] - test[:-1]) - (ref[1:] - ref[:-1])
    per_step = motion_error.square().mean(dim=(1, 2, 3)).sqrt()
    return {
        "psnr": float(psnr),
        "ssim": float(frame_ssim.mean()),
        "temporal": float(motion_error.square().mean().sqrt()) if len(test) > 1 else None,
        "per_frame": {"psnr": [float(v) for v in frame_psnr], "ssim": [float(v) for v in frame_ssim],
                      "temporal": [float(v) for v in per_step]},
        "frames": len(test),
    }


def read_video(path: str | os.PathLike, frames: int | None = None) -> np.ndarray:
    """A video file's frames as uint8 (frames, height, width, 3): .mp4 (ffmpeg) or .gif (Pillow).

    A GIF written by Pillow (as `edit generate` does) stores a run of identical frames as one
    frame lasting the run's time, so each GIF frame counts as its duration over one frame's time.
    One frame's time is the greatest common divisor of the durations, which is right unless every
    frame of the file is a repeat (a clip frozen throughout, or frozen in runs that share a
    factor); `frames`, the count the GIF was written with, sets it to the total time over
    `frames` instead. Ignored for .mp4.

    Raises ValueError naming the path for an unknown suffix, a missing or non-regular file (a
    FIFO or device is refused before it is opened, so this never blocks) or one that cannot be
    decoded.
    """
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise ValueError(f"frames: expected an integer >= 1 or None, got {frames!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ValueError(f"cannot read {str(path)!r}: expected a file ending in "
                         f"{' or '.join(READ_SUFFIXES)}, got {path.suffix or 'no suffix'}")
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"cannot read {str(path)!r}: it is {kind}")
    try:
        video = _read_gif(path, frames) if suffix == ".gif" else _read_mp4(path)
    except Exception as err:  # whatever the decoder says of a damaged file, it is unreadable
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read {str(path)!r}: {reason}") from None
    if len(video) == 0:
        raise ValueError(f"cannot read {str(path)!r}: it has no frames")
    return video


def _read_mp4(path: Path) -> np.ndarray:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        width, height = next(reader)["size"]
        images = [np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3) for buffer in reader]
    finally:
        reader.close()  # stops the ffmpeg process if decoding failed half way
    return np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)


def _read_gif(path: Path, frames: int | None) -> np.ndarray:
    from PIL import Image

    images, durations = [], []
    with Image.open(path) as image:
        if image.format != "GIF":
            raise ValueError(f"it is {image.format or 'an unknown format'}, not a GIF")
        for index in range(image.n_frames):
            image.seek(index)
            images.append(np.asarray(image.convert("RGB")))
            durations.append(image.info.get("duration"))
    if not all(isinstance(d, int) and d > 0 for d in durations):
        return np.stack(images)  # no timing to go by: one frame each
    unit = math.gcd(*durations) if frames is None else sum(durations) / frames
    counts = [round(d / unit) for d in durations]
    if frames is not None and (sum(counts) != frames or min(counts) < 1
                               or any(abs(d / unit - c) > 0.05 for d, c in zip(durations, counts))):
        raise ValueError(f"its {len(durations)} stored frames, lasting {durations} ms, are not {frames} "
                         "frames of equal time")
    return np.repeat(np.stack(images), counts, axis=0)
