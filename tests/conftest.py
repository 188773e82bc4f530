"""Shared fixtures: tiny seeded Wan components and a helper that runs a pipeline reproducibly."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("EDIT_DEBUG", "1")  # the tests verify the graph after every pass
os.environ.setdefault("EDIT_MODEL", "tiny")  # the CLI's default model: fast; tests of the toy name it

import pytest
import torch

from edit import tiny_components

#: Small enough that a 3-step CFG generation takes well under a second on 2 CPU cores.
SMALL = dict(num_frames=9, height=32, width=48, num_inference_steps=3)
SIZE = {k: v for k, v in SMALL.items() if k != "num_inference_steps"}  # what pipe.compile needs besides steps


@functools.lru_cache(maxsize=None)
def _components(seed: int, dtype: torch.dtype, overrides: tuple) -> dict:
    return tiny_components(seed, torch_dtype=dtype, **dict(overrides))


def components(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> dict:
    """Cached tiny components (shared between tests: never mutate their weights)."""
    return dict(_components(seed, dtype, tuple(sorted(overrides.items()))))


def generate(pipe, prompt="a red fox running through snow", seed: int = 7, **kwargs):
    """Run `pipe` with a fresh seeded generator and return `.frames`."""
    pipe.set_progress_bar_config(disable=True)
    args = {**SMALL, "output_type": "latent", **kwargs}
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), **args).frames


@pytest.fixture
def tiny():
    return components()


@functools.lru_cache(maxsize=None)
def _i2v_components(kind: str, seed: int) -> dict:
    from edit import tiny_i2v_components

    return tiny_i2v_components(seed, kind=kind)


def i2v_components(kind: str = "wan2.1", seed: int = 0) -> dict:
    """Tiny image-to-video components (`edit.tiny_i2v_components`), built once per (kind, seed)."""
    return dict(_i2v_components(kind, seed))


def i2v_images():
    """Two seeded RGB images of the small size: a first frame and a last frame."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return tuple(Image.fromarray((rng.random((SMALL["height"], SMALL["width"], 3)) * 255).astype("uint8"))
                 for _ in range(2))


def generate_i2v(pipe, image=None, prompt="a red fox running through snow", seed: int = 7, **kwargs):
    """Run an image-to-video `pipe` from `image` (default: the first of `i2v_images`) with a fresh
    seeded generator and return `.frames`."""
    pipe.set_progress_bar_config(disable=True)
    args = {**SMALL, "output_type": "latent", **kwargs}
    image = i2v_images()[0] if image is None else image
    return pipe(image, prompt, generator=torch.Generator("cpu").manual_seed(seed), **args).frames
