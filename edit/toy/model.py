"""The trained toy Wan, loaded offline from the folder `python -m edit.toy.train` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = Path(__file__).resolve().parent / "weights"


def trained(folder: str | Path | None = None) -> bool:
    """Whether a trained toy pipeline is in `folder` (default: the shipped weights folder)."""
    return (Path(folder) if folder is not None else WEIGHTS).joinpath("model_index.json").is_file()


def default_model() -> str:
    """The model the CLI and the examples use when none is named: $EDIT_MODEL where it is set (the
    test suite sets `tiny`: most CLI tests need speed, not a picture), else the trained toy when its
    weights are in edit/toy/weights, else the random-weight `tiny`."""
    import os

    return os.environ.get("EDIT_MODEL") or ("toy" if trained() else "tiny")


def toy_components(*, folder: str | Path | None = None) -> dict[str, Any]:
    """The trained toy's components (`WanPipeline(**toy_components())` accepts them)."""
    pipe = toy_pipeline(folder=folder)
    return dict(pipe.components)


def toy_pipeline(*, folder: str | Path | None = None, torch_dtype=None):
    """An `EditWanPipeline` on the trained toy weights: the CLI's and examples' default model.

    It draws one or two flat shapes (circle, square, triangle; red, green, blue, yellow, white)
    moving left, right, up, down, diagonally, bouncing or staying still on a dark or gradient
    background, 17 frames of 64x64, from captions such as "a red circle moving left on a dark
    background". `edit.tiny_pipeline()` is the random-weight model the exactness tests use.
    """
    import torch

    from edit.pipeline import EditWanPipeline

    path = Path(folder) if folder is not None else WEIGHTS
    if not trained(path):
        raise FileNotFoundError(f"folder: no trained toy pipeline in {str(path)!r} (model_index.json missing); "
                                "train one with `python -m edit.toy.train`")
    return EditWanPipeline.from_pretrained(str(path), dtype=torch_dtype or torch.float32, local_files_only=True)
