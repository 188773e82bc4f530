"""Bit-for-bit parity of EditWanPipeline (no cache) with diffusers' WanPipeline."""

from __future__ import annotations

import pytest
import torch
from conftest import components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline

CONFIGS = {
    "4 layers, 2 heads x 12": {},
    "3 layers, 4 heads x 8": dict(num_layers=3, num_attention_heads=4, attention_head_dim=8, ffn_dim=40),
}


def both(comps, **kwargs):
    return generate(WanPipeline(**comps), **kwargs), generate(EditWanPipeline(**comps), **kwargs)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_latents_equal_diffusers(config, dtype, guidance):
    ref, out = both(components(dtype=dtype, **CONFIGS[config]), guidance_scale=guidance)
    assert out.dtype == ref.dtype == torch.float32
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kwargs", [
    dict(prompt=["a red fox", "a blue whale in the deep sea"], negative_prompt=["blurry", "low quality"]),
    dict(num_videos_per_prompt=2),
    dict(height=48, width=32, num_frames=13),
    dict(height=64, width=32, num_frames=5, num_inference_steps=4),
], ids=["batch-of-2-prompts", "2-videos-per-prompt", "portrait-13-frames", "tall-4-steps"])
def test_batch_and_shapes_equal_diffusers(kwargs):
    ref, out = both(components(), **kwargs)
    assert out.shape == ref.shape
    assert torch.equal(out, ref)


def test_decoded_video_equal_diffusers():
    ref, out = both(components(), output_type="np")
    assert out.shape == ref.shape == (1, 9, 32, 48, 3)
    assert (out == ref).all()


def test_step_end_callback_edits_latents_and_embeds_identically():
    def callback(pipe, step, t, kw):
        out = {"latents": kw["latents"] * 0.98}
        if step == 1:
            out["prompt_embeds"] = kw["prompt_embeds"].flip(1)
        return out

    seen = []

    def record(pipe, step, t, kw):
        seen.append((step, float(t), pipe.current_timestep is not None))
        return callback(pipe, step, t, kw)

    comps = components()
    inputs = ["latents", "prompt_embeds"]
    ref = generate(WanPipeline(**comps), callback_on_step_end=callback, callback_on_step_end_tensor_inputs=inputs)
    out = generate(EditWanPipeline(**comps), callback_on_step_end=record, callback_on_step_end_tensor_inputs=inputs)
    assert torch.equal(out, ref)
    assert [s for s, _, _ in seen] == [0, 1, 2] and all(has_t for _, _, has_t in seen)
    plain = generate(EditWanPipeline(**comps))
    assert not torch.equal(out, plain)  # the callback really changed the run


def test_interrupt_stops_like_diffusers():
    def stop_after_first(pipe, step, t, kw):
        if step == 0:
            pipe._interrupt = True
        return {}

    comps = components()
    ref = generate(WanPipeline(**comps), callback_on_step_end=stop_after_first, num_inference_steps=4)
    out = generate(EditWanPipeline(**comps), callback_on_step_end=stop_after_first, num_inference_steps=4)
    assert torch.equal(out, ref)
    assert not torch.equal(out, generate(EditWanPipeline(**comps), num_inference_steps=4))


def test_wan22_expanded_timesteps_equal_diffusers():
    comps = components()
    ref = generate(WanPipeline(**comps, expand_timesteps=True))
    out = generate(EditWanPipeline(**comps, expand_timesteps=True))
    assert torch.equal(out, ref)
    assert not torch.equal(out, generate(EditWanPipeline(**comps)))


def test_given_latents_and_prompt_embeds_equal_diffusers():
    comps = components()
    gen = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, 3, 4, 6, generator=gen)
    embeds, negative = torch.randn(1, 512, 32, generator=gen), torch.randn(1, 512, 32, generator=gen)
    kwargs = dict(prompt=None, latents=latents, prompt_embeds=embeds, negative_prompt_embeds=negative)
    ref, out = both(comps, **kwargs)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("steps", [0, -2, 2.5])
def test_bad_step_count_is_rejected(steps):
    with pytest.raises(ValueError if isinstance(steps, int) else TypeError, match="num_inference_steps"):
        generate(EditWanPipeline(**components()), num_inference_steps=steps)
