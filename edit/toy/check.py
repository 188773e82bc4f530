"""Reading a generated toy clip back into words: its dominant foreground colour and the direction
its foreground moves, so a test can check a generation against its caption (and fail).

The background of every clip in the data set is constant along each row (plain, or a vertical
gradient), so each frame's row median is its background (a shape covers under half a row), and
the foreground is what differs from it clearly.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from edit.toy.data import COLOURS, MOTIONS

#: colour distance from the row's background above which a pixel is foreground
FOREGROUND = 0.25
#: net motion under this many pixels (at 64 wide) counts as none
STILL = 4.0
DIRECTIONS = ("left", "right", "up", "down", "diagonally")


@attrs.frozen
class Reading:
    colour: str | None  # None: no foreground found
    direction: str | None  # left, right, up, down, diagonally, still; None without foreground
    displacement: tuple[float, float]  # (dx, dy) in pixels of the clip, from its first frames to its last
    foreground: float  # fraction of pixels that are foreground


def foreground(video: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: pixels clearly off their row's background."""
    background = np.median(video, axis=2, keepdims=True)
    return np.linalg.norm(video - background, axis=-1) > FOREGROUND


def read(video: np.ndarray) -> Reading:
    """Read a clip, (F, H, W, 3) floats in [0, 1] (diffusers' `output_type="np"` frames)."""
    video = np.asarray(video, dtype=np.float32)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video: expected (frames, height, width, 3), got {video.shape}")
    mask = foreground(video)
    share = float(mask.mean())
    if not mask.any():
        return Reading(None, None, (0.0, 0.0), share)
    mean = video[mask].mean(axis=0)
    colour = min(COLOURS, key=lambda name: float(np.linalg.norm(mean - np.asarray(COLOURS[name]))))
    frames, height, width = mask.shape
    ys, xs = np.mgrid[0:height, 0:width]
    centres = []
    for f in range(frames):
        if mask[f].sum() >= 4:  # a frame with no clear foreground says nothing of position
            centres.append((f, float(xs[mask[f]].mean()), float(ys[mask[f]].mean())))
    if len(centres) < 4:
        return Reading(colour, None, (0.0, 0.0), share)
    quarter = max(1, len(centres) // 4)
    first = np.mean([(x, y) for _, x, y in centres[:quarter]], axis=0)
    last = np.mean([(x, y) for _, x, y in centres[-quarter:]], axis=0)
    dx, dy = (last - first).tolist()
    return Reading(colour, direction(dx, dy, width), (dx, dy), share)


def direction(dx: float, dy: float, width: int = 64) -> str:
    """The motion word of the data set nearest to a displacement (down is +y)."""
    if math.hypot(dx, dy) < STILL * width / 64:
        return "still"
    return max(DIRECTIONS, key=lambda name: _cosine((dx, dy), MOTIONS[name]))


def _cosine(a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b) or 1.0)


def matches(reading: Reading, colour: str, motion: str) -> bool:
    return reading.colour == colour and reading.direction == motion


# -- the semantic check of a model: generate from captions, read the clips back ----------------------

def captions(held_out: bool, count: int, seed: int) -> list:
    """`count` single-shape clips of the grammar with a direction (their captions are the prompts),
    every colour and direction in turn; `held_out`: only the HELD_OUT colour-shape pairs, else never."""
    from edit.toy import data

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        motion = DIRECTIONS[i % len(DIRECTIONS)]
        if held_out:
            colour, shape = data.HELD_OUT[i % len(data.HELD_OUT)]
            out.append(data.sample(rng, colour=colour, shape=shape, motion=motion, two=0))
        else:
            colour = tuple(COLOURS)[(i // len(DIRECTIONS) + i) % len(COLOURS)]
            out.append(data.sample(rng, colour=colour, motion=motion, two=0, held_out=False))
    return out


def score(pipe, clips: list, seed: int, steps: int = 20, guidance_scale: float = 5.0) -> tuple[float, list[bool]]:
    """The fraction of `clips` whose generation (one batch, from their captions) reads back as the
    caption's colour and direction, and the hit of each."""
    import torch

    from edit.toy.data import FRAMES, HEIGHT, WIDTH

    frames = pipe([c.caption for c in clips], num_inference_steps=steps, guidance_scale=guidance_scale,
                  num_frames=FRAMES, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(seed),
                  output_type="np").frames
    hits = [matches(read(video), c.things[0].colour, c.things[0].motion) for video, c in zip(frames, clips)]
    return sum(hits) / len(hits), hits
