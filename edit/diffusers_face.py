"""What `EditWanPipeline` does as diffusers' Wan pipeline does it: size rounding, VAE decoding,
LoRA scaling, and weight alignment after loading."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from diffusers.utils import logging
from diffusers.utils.torch_utils import get_module_execution_device

logger = logging.get_logger("edit.pipeline")


def fit_video_size(pipe: Any, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Round frames/height/width to what the VAE and patchify accept, warning as diffusers does."""
    temporal = pipe.vae_scale_factor_temporal
    if num_frames % temporal != 1:
        logger.warning(f"`num_frames - 1` has to be divisible by {temporal}. Rounding to the nearest number.")
        num_frames = num_frames // temporal * temporal + 1
    num_frames = max(num_frames, 1)
    patch = pipe.transformer.config.patch_size
    h_mult, w_mult = pipe.vae_scale_factor_spatial * patch[1], pipe.vae_scale_factor_spatial * patch[2]
    fit_h, fit_w = height // h_mult * h_mult, width // w_mult * w_mult
    if (fit_h, fit_w) != (height, width):
        logger.warning(f"`height` and `width` must be multiples of ({h_mult}, {w_mult}) for proper "
                       f"patchification. Adjusting ({height}, {width}) -> ({fit_h}, {fit_w}).")
    if fit_h < 1 or fit_w < 1:
        raise ValueError(f"height/width: ({height}, {width}) is smaller than one patch "
                         f"({h_mult}, {w_mult}) of this model")
    return num_frames, fit_h, fit_w


def latent_shape(pipe: Any, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    return (batch, pipe._latent_channels(), (num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
            height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)


def decode(pipe: Any, latents: torch.Tensor, output_type: str):
    """Undo the VAE latent normalisation, decode, post-process (as diffusers' Wan pipeline)."""
    vae = pipe.vae
    latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type=output_type)


@contextlib.contextmanager
def lora_scale(transformer: torch.nn.Module, attention_kwargs: dict[str, Any] | None):
    """Apply a LoRA `scale` from attention_kwargs around the run, as the model's forward would."""
    from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

    scale = (attention_kwargs or {}).get("scale", 1.0)
    if USE_PEFT_BACKEND:
        scale_lora_layers(transformer, scale)
    try:
        yield
    finally:
        if USE_PEFT_BACKEND:
            unscale_lora_layers(transformer, scale)


def realign(module: torch.nn.Module, alignment: int = 64) -> None:
    """Copy parameters and buffers whose storage is not `alignment`-byte aligned: CPU BLAS kernels
    pick their summation order by alignment, so a loaded model would otherwise differ in the last
    bits from the same weights built in memory."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()


def run_state(pipe: Any, program: Any, inputs: dict[str, Any], timesteps: torch.Tensor, progress_bar,
              num_inference_steps: int, callback: Any, tensor_inputs: list[str]) -> Any:
    """The runtime environment of one call: step-begin bookkeeping and diffusers' step-end callback."""
    from edit.runtime import RunState, StepEnd

    num_warmup_steps = len(timesteps) - num_inference_steps * pipe.scheduler.order
    branch_inputs = {"prompt_embeds": "text.cond", "negative_prompt_embeds": "text.uncond"}

    def step_begin(step: int) -> None:
        pipe._current_timestep = timesteps[step]

    def step_end(step: int, latents: torch.Tensor) -> StepEnd | None:
        result = None
        if callback is not None:
            values = {"latents": latents, "prompt_embeds": state.inputs["text.cond"],
                      "negative_prompt_embeds": state.inputs.get("text.uncond")}
            outputs = callback(pipe, step, timesteps[step], {k: values[k] for k in tensor_inputs})
            result = StepEnd(latents=outputs.pop("latents", None))
            for name, key in branch_inputs.items():
                if name in outputs and key in state.inputs:
                    result.inputs[key] = outputs.pop(name)
        if step == len(timesteps) - 1 or ((step + 1) > num_warmup_steps and (step + 1) % pipe.scheduler.order == 0):
            progress_bar.update()
        if pipe.interrupt:
            result = result or StepEnd()
            result.stop = True
        return result

    others = {k: a for k, a in pipe.adapters.items() if k != pipe.adapter.model_id}
    state = RunState(adapter=pipe.adapter, scheduler=pipe.scheduler, timesteps=timesteps, inputs=inputs,
                     expand_timesteps=bool(pipe.config.expand_timesteps), step_begin=step_begin,
                     step_end=step_end, cache=pipe.cache, adapters=others)
    return state
