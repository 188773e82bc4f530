"""EDiT: a hackable inference engine for diffusion transformers, built around editable cache storage.

>>> import edit
>>> pipe = edit.tiny_pipeline(seed=0)
>>> video = pipe("a red fox", num_frames=5, height=32, width=32, num_inference_steps=2, output_type="latent").frames
>>> tuple(video.shape)
(1, 16, 2, 4, 4)
"""

import importlib
from typing import Any

__all__ = ["EditWanImageToVideoPipeline", "EditWanPipeline", "tiny_components", "tiny_i2v_components",
           "tiny_i2v_pipeline", "tiny_pipeline", "toy_components", "toy_pipeline"]
__version__ = "0.1.0"

#: Loaded on first use, so `import edit.graph` / `edit.passes` (no model code) imports neither torch
#: nor diffusers.
_LAZY = {"EditWanPipeline": "edit.pipeline", "EditWanImageToVideoPipeline": "edit.pipeline_i2v",
         "tiny_components": "edit.tiny", "tiny_pipeline": "edit.tiny", "tiny_i2v_components": "edit.tiny",
         "tiny_i2v_pipeline": "edit.tiny",
         "toy_components": "edit.toy.model", "toy_pipeline": "edit.toy.model"}
_SUBMODULES = ("cache", "cli", "metrics", "pipeline", "pipeline_i2v", "search", "tiny", "toy")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"edit.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
