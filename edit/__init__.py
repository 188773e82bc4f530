"""EDiT: a hackable inference engine for diffusion transformers, built around editable cache storage.

>>> import edit
>>> pipe = edit.tiny_pipeline(seed=0)
>>> video = pipe("a red fox", num_frames=5, height=32, width=32, num_inference_steps=2, output_type="latent").frames
>>> tuple(video.shape)
(1, 16, 2, 4, 4)
"""

from edit import cache  # noqa: F401  (registers the built-in policies)
from edit.pipeline import EditWanPipeline
from edit.tiny import tiny_components, tiny_pipeline

__all__ = ["EditWanPipeline", "tiny_components", "tiny_pipeline"]
__version__ = "0.1.0"
