"""`EditWanImageToVideoPipeline`: diffusers' `WanImageToVideoPipeline` whose denoising loop is a
compiled EDiT plan (Wan2.1 I2V with its CLIP image encoder, Wan2.2 I2V A14B's two experts, Wan2.2
TI2V-5B, and first-last-frame runs with `last_image`).

The conditions are run inputs of the plan (`RunSpec.conditions`): the encoded condition video
(`condition`), with TI2V the first-frame `mask`, with Wan2.1 the CLIP embedding (`image`); each
embed builds the model input from them as diffusers' loop does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.utils import logging as _hf_logging

_level = _hf_logging.get_verbosity()
_hf_logging.set_verbosity_error()  # diffusers' module imports CLIPImageProcessor by name: transformers
try:  # warns at that import when torchvision is missing, though nothing is loaded yet
    from diffusers import WanImageToVideoPipeline
finally:
    _hf_logging.set_verbosity(_level)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from edit import diffusers_face as face
from edit.graph import Graph
from edit.pipeline import EditWanMixin, _one_at_a_time


class EditWanImageToVideoPipeline(EditWanMixin, WanImageToVideoPipeline):
    """A drop-in `WanImageToVideoPipeline`: same components, call signature and outputs, bit-for-bit
    identical with no cache; caching, plans and replays as `EditWanPipeline`'s.

    The compiled plan says how the run is conditioned (`plan.spec.condition`: "concat" for Wan2.1
    and Wan2.2 A14B, "first_frame" for TI2V; `plan.spec.image_embeds` with a CLIP image encoder),
    so a text-to-video plan is refused here, and the other way round.
    """

    _task = "i2v"  # a 14B checkpoint takes TeaCache's i2v-480P coefficients (i2v-720P by wan_variant)

    def __init__(self, tokenizer, text_encoder, vae, scheduler, image_processor=None, image_encoder=None,
                 transformer=None, transformer_2=None, boundary_ratio: float | None = None,
                 expand_timesteps: bool = False):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                         image_processor=image_processor, image_encoder=image_encoder, transformer=transformer,
                         transformer_2=transformer_2, boundary_ratio=boundary_ratio,
                         expand_timesteps=expand_timesteps)
        self._init_edit()

    def _conditioning(self) -> tuple[str | None, bool]:
        image_dim = None if self.transformer is None else self.transformer.config.image_dim
        return ("first_frame" if self.config.expand_timesteps else "concat"), image_dim is not None

    def _latent_channels(self) -> int:
        return self.vae.config.z_dim

    def _check_last_image(self, last_image: Any, image_embeds: Any) -> None:
        """Refuse the first-last-frame calls diffusers would ignore or fail deep inside."""
        if last_image is not None and self.config.expand_timesteps:
            raise ValueError("last_image: a TI2V pipeline (expand_timesteps) conditions on the first frame only; "
                             "diffusers would ignore the last image")
        if self._conditioning()[1] and image_embeds is None:
            two = self.transformer.config.pos_embed_seq_len is not None  # Wan2.1 FLF2V: the CLIP tokens of two images
            if last_image is not None and not two:
                raise ValueError("last_image: this transformer embeds one image (a Wan2.1 I2V checkpoint: no "
                                 "pos_embed_seq_len); first-last-frame runs need a FLF2V checkpoint")
            if last_image is None and two:
                raise ValueError("last_image: this FLF2V transformer embeds two images (pos_embed_seq_len is set); "
                                 "give the last frame too")

    @_one_at_a_time
    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        last_image: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        plan: Graph | None = None,
        reset_cache: bool = True,
        prefetch_reuse: bool = True,
    ) -> WanPipelineOutput | tuple:
        """Generate a video from `image` (and with `last_image`, towards it); arguments as
        `WanImageToVideoPipeline.__call__`, plus `plan`, `reset_cache` and `prefetch_reuse` as
        `EditWanPipeline.__call__`."""
        self._check_flags(reset_cache, prefetch_reuse)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, negative_prompt, image, height, width, prompt_embeds, negative_prompt_embeds,
                          image_embeds, callback_on_step_end_tensor_inputs, guidance_scale_2)
        if image is None:  # diffusers accepts image_embeds alone, then fails preparing the latents
            raise ValueError("image: the condition video is encoded from it; give the image (image_embeds only "
                             "replaces its CLIP embedding)")
        self._check_last_image(last_image, image_embeds)
        timesteps, num_frames, height, width, batch_size = self._begin_call(
            prompt=prompt, prompt_embeds=prompt_embeds, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
            num_videos_per_prompt=num_videos_per_prompt, max_sequence_length=max_sequence_length,
            output_type=output_type, attention_kwargs=attention_kwargs)
        shape = tuple(latents.shape) if latents is not None else face.latent_shape(
            self, batch_size * (num_videos_per_prompt or 1), num_frames, height, width)
        program, policy = self._call_program(num_inference_steps, guidance_scale, timesteps, shape, plan,
                                             prefetch_reuse, guidance_scale_2)

        inputs = self._encode_text(prompt, negative_prompt, num_videos_per_prompt, prompt_embeds,
                                   negative_prompt_embeds, max_sequence_length)
        device = self._execution_device
        if self._conditioning()[1]:  # Wan2.1: the CLIP embedding of the image(s) joins the text
            if image_embeds is None:
                image_embeds = self.encode_image(image if last_image is None else [image, last_image], device)
            inputs["image"] = image_embeds.repeat(batch_size, 1, 1).to(self.transformer.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        image = self.video_processor.preprocess(image, height=height, width=width).to(device, dtype=torch.float32)
        if last_image is not None:
            last_image = self.video_processor.preprocess(last_image, height=height, width=width).to(
                device, dtype=torch.float32)
        prepared = self.prepare_latents(image, batch_size * num_videos_per_prompt, self.vae.config.z_dim, height,
                                        width, num_frames, torch.float32, device, generator, latents, last_image)
        latents, inputs["condition"] = prepared[0], prepared[1]
        mask = prepared[2] if self.config.expand_timesteps else None
        if mask is not None:
            inputs["mask"] = mask
        joined = 0 if mask is not None else inputs["condition"].shape[1]
        self.adapter.check_latents(latents, channels=self.transformer.config.in_channels - joined)
        latents = self._run_call(program, policy, {"latents": latents, **inputs}, num_inference_steps,
                                 callback_on_step_end, callback_on_step_end_tensor_inputs, reset_cache,
                                 attention_kwargs)
        if mask is not None:  # TI2V: the first frame is the image's, as diffusers puts it back
            latents = (1 - mask) * inputs["condition"] + mask * latents
        return self._end_call(latents, output_type, return_dict)
