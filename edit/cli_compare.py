"""`edit compare A B`: PSNR, SSIM and the temporal measure of video A against reference B.

With `--json` the result is one JSON line of `edit.metrics.compare`'s dict, except that an infinite
PSNR (identical frames) is written as the string "inf": JSON has no infinity, and null already
means "not defined" there (the temporal measure of a 1-frame video). `float("inf")` reads it back.
"""

from __future__ import annotations

import argparse
import json
import math

from edit.cli_checks import CliError

#: The positional names, as the parser shows them and as each refusal starts.
NAMES = ("A", "B")


def _describe(shape: tuple) -> str:
    frames, height, width = shape[:3]
    return f"{frames} frame{'s' if frames != 1 else ''} of {width}x{height}"


def _read_both(paths: list[str]) -> list:
    from edit.metrics import read_video

    videos = []
    for name, path in zip(NAMES, paths):
        try:
            videos.append(read_video(path))
        except ValueError as err:
            raise CliError(f"{name}: {err}") from None
    if videos[0].shape != videos[1].shape:
        # Pillow stores a GIF's repeated frames once; the other file's count tells how many there were.
        short = 0 if len(videos[0]) < len(videos[1]) else 1
        if paths[short].lower().endswith(".gif") and videos[0].shape[1:] == videos[1].shape[1:]:
            try:
                videos[short] = read_video(paths[short], frames=len(videos[1 - short]))
            except ValueError:
                pass  # then the shapes stay different, and that is the error to report
    if videos[0].shape != videos[1].shape:
        raise CliError(f"B: is {_describe(videos[1].shape)} {tuple(videos[1].shape)} but A is "
                       f"{_describe(videos[0].shape)} {tuple(videos[0].shape)}; compare needs the same "
                       "frames and size")
    return videos


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _for_json(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {key: _for_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_for_json(item) for item in value]
    return value


def compare_command(args: argparse.Namespace) -> int:
    from edit.metrics import compare

    video, reference = _read_both([args.a, args.b])
    result = compare(video, reference)
    if args.json:
        print(json.dumps(_for_json(result), allow_nan=False))
        return 0
    frames = result["per_frame"]
    print(f"psnr {_number(result['psnr'], 2)} dB, ssim {result['ssim']:.4f}, temporal "
          f"{_number(result['temporal'], 4)} ({_describe(video.shape)})")
    print("per-frame psnr (dB): " + " ".join(_number(v, 2) for v in frames["psnr"]))
    print("per-frame ssim: " + " ".join(f"{v:.4f}" for v in frames["ssim"]))
    return 0
