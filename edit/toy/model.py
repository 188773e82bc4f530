"""The trained toy Wan, loaded offline from the folder `python -m edit.toy.train` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS = Path(__file__).resolve().parent / "weights"


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
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"folder: no trained toy pipeline in {str(path)!r} (model_index.json missing); "
                                "train one with `python -m edit.toy.train`")
    return EditWanPipeline.from_pretrained(str(path), dtype=torch_dtype or torch.float32, local_files_only=True)
