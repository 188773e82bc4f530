"""The embedded default model: a complete tiny Wan pipeline with seeded random weights.

Built from small configs in memory, with a byte-level tokenizer that needs no files, so every
example, test and benchmark runs on a CPU with no download.
"""

from __future__ import annotations

from typing import Any

import torch

from edit.checks import check_tiny

#: Defaults of the tiny transformer; any key can be overridden through `tiny_components(**overrides)`.
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=48,
    num_layers=4,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)

#: Defaults of the tiny UMT5 text encoder (its d_model is the transformer's text_dim).
TINY_TEXT_ENCODER = dict(d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                         relative_attention_max_distance=32)

#: Defaults of the tiny VAE: temporal x4 and spatial x8 compression like the real one.
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                temperal_downsample=[False, True, True])


def tiny_components(seed: int = 0, *, torch_dtype: torch.dtype = torch.float32,
                    text_encoder: dict[str, Any] | None = None, vae: dict[str, Any] | None = None,
                    **transformer_overrides: Any) -> dict[str, Any]:
    """The components dict of a tiny Wan pipeline (`WanPipeline(**components)` accepts it).

    Weights are seeded by `seed` without touching the global RNG; keyword overrides change the
    transformer config (e.g. `num_layers=8, attention_head_dim=16`).
    """
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    unknown = set(transformer_overrides) - set(TINY_TRANSFORMER)
    if unknown:
        raise ValueError(f"transformer_overrides: unknown keys {sorted(unknown)}; allowed: {sorted(TINY_TRANSFORMER)}")
    if not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype: expected a torch.dtype, got {type(torch_dtype).__name__}")
    config = {**TINY_TRANSFORMER, **transformer_overrides}
    check_tiny(seed, config, vae)
    tokenizer = ByT5Tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**config)
        text_config = UMT5Config(vocab_size=len(tokenizer), d_model=config["text_dim"],
                                 **{**TINY_TEXT_ENCODER, **(text_encoder or {})})
        encoder = UMT5EncoderModel(text_config)
        autoencoder = AutoencoderKLWan(**{**TINY_VAE, "z_dim": config["in_channels"], **(vae or {})})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return {
        "transformer": _cast_like_from_pretrained(transformer, torch_dtype).eval(),
        "vae": autoencoder.eval(),
        "text_encoder": encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


#: Defaults of the tiny CLIP vision encoder of a Wan2.1 image-to-video pipeline.
TINY_IMAGE_ENCODER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          image_size=32, patch_size=8, projection_dim=16)

#: The image-to-video layouts `tiny_i2v_components` builds.
I2V_KINDS = ("wan2.1", "flf2v", "wan2.2", "ti2v")


def tiny_i2v_components(seed: int = 0, *, kind: str = "wan2.1", torch_dtype: torch.dtype = torch.float32,
                        **transformer_overrides: Any) -> dict[str, Any]:
    """The components dict of a tiny image-to-video pipeline (`WanImageToVideoPipeline(**components)`
    accepts it), in one of three layouts (`kind`):

    - "wan2.1": Wan2.1 I2V: a CLIP image encoder, and a transformer taking the latents, a 4-channel
      frame mask and the encoded condition video (36 channels) with the image embedding;
    - "flf2v": Wan2.1 FLF2V: as "wan2.1", with the image embedder's position embedding over the
      CLIP tokens of two images (the first and the `last_image`), which its calls then need;
    - "wan2.2": Wan2.2 I2V A14B: two experts of that input (seeded one after the other), switching
      at `boundary_ratio=0.9`, no image encoder;
    - "ti2v": Wan2.2 TI2V-5B: one transformer on the latents' own channels, `expand_timesteps=True`
      (the first latent frame is the image, with timestep 0).
    """
    from diffusers import WanTransformer3DModel

    if kind not in I2V_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(map(repr, I2V_KINDS))}, got {kind!r}")
    comps = tiny_components(seed, torch_dtype=torch_dtype, **transformer_overrides)
    if kind == "ti2v":
        return {**comps, "expand_timesteps": True}
    latent = comps["vae"].config.z_dim
    config = {**TINY_TRANSFORMER, **transformer_overrides, "in_channels": 2 * latent + 4}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind in ("wan2.1", "flf2v"):
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_IMAGE_ENCODER)).eval()
            inner = config["num_attention_heads"] * config["attention_head_dim"]
            tokens = (TINY_IMAGE_ENCODER["image_size"] // TINY_IMAGE_ENCODER["patch_size"]) ** 2 + 1
            experts = [WanTransformer3DModel(**config, image_dim=TINY_IMAGE_ENCODER["hidden_size"],
                                             added_kv_proj_dim=inner,
                                             pos_embed_seq_len=2 * tokens if kind == "flf2v" else None)]
        else:
            experts = [WanTransformer3DModel(**config), WanTransformer3DModel(**config)]
    experts = [_cast_like_from_pretrained(t, torch_dtype).eval() for t in experts]
    comps["transformer"] = experts[0]
    if kind in ("wan2.1", "flf2v"):
        return {**comps, "image_encoder": encoder, "image_processor": _image_processor()}
    return {**comps, "transformer_2": experts[1], "boundary_ratio": 0.9}


def _image_processor():
    """CLIP preprocessing at the tiny encoder's size (the PIL implementation: no torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as processor
    except ImportError:  # transformers before the PIL/torchvision split
        from transformers import CLIPImageProcessor as processor
    size = TINY_IMAGE_ENCODER["image_size"]
    return processor(crop_size=size, size=size)


def tiny_pipeline(seed: int = 0, *, torch_dtype: torch.dtype = torch.float32, **overrides: Any):
    """A ready `EditWanPipeline` on the tiny seeded model (the default of the CLI and examples)."""
    from edit.pipeline import EditWanPipeline

    return EditWanPipeline(**tiny_components(seed, torch_dtype=torch_dtype, **overrides))


def tiny_i2v_pipeline(seed: int = 0, *, kind: str = "wan2.1", torch_dtype: torch.dtype = torch.float32,
                      **overrides: Any):
    """A ready `EditWanImageToVideoPipeline` on tiny seeded components (`tiny_i2v_components`)."""
    from edit.pipeline_i2v import EditWanImageToVideoPipeline

    return EditWanImageToVideoPipeline(**tiny_i2v_components(seed, kind=kind, torch_dtype=torch_dtype, **overrides))


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast to `dtype` but keep the model's `_keep_in_fp32_modules` in float32, as
    `from_pretrained(torch_dtype=...)` does (RoPE, time embedder and norms stay precise)."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, param in model.named_parameters():
        target = torch.float32 if any(k in name for k in keep) else dtype
        if param.dtype != target:
            param.data = param.data.to(target)
    return model
