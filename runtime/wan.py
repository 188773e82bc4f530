"""`WanAdapter`: diffusers' `WanTransformer3DModel` split into embed / run_blocks / head.

The three pieces call the model's own modules in the same order, with the same dtypes and the
same tensor layout as `WanTransformer3DModel.forward`, so running them back to back is
bit-for-bit identical to one forward call. Another model plugs into EDiT by writing an adapter
with the same three methods.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from edit.runtime.fingerprint import DigestCache, config_digest


@attrs.define(eq=False)
class EmbedOutput:
    """Everything the blocks and the head need from the non-block prefix of a forward.

    `e` is the time embedding (diffusers `temb`), `e0` the per-block modulation input
    (diffusers `timestep_proj`, already unflattened to (..., 6, dim)) — TeaCache's two signals.
    """

    hidden: torch.Tensor
    e: torch.Tensor
    e0: torch.Tensor
    encoder_hidden: torch.Tensor
    rotary: Any
    grid: tuple[int, int, int, int]  # batch, frames, height, width after patchify
    # Wan2.2 TI2V (a timestep per patch): each sample's patch that carries its denoising timestep
    sample_token: torch.Tensor | None = None


def _sample_token(timestep: torch.Tensor) -> torch.Tensor:
    """(batch,) index of the first patch with each sample's largest timestep (batch, patches):
    the denoised patches' timestep, where an image-to-video run's first-frame patches carry 0."""
    return timestep.argmax(dim=1)


def _per_sample(e: torch.Tensor, e0: torch.Tensor, token: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`e` (batch, [patches,] dim) and `e0` (batch, [patches,] 6, dim) at each sample's `token`."""
    if token is None:
        return e, e0
    rows = torch.arange(e.shape[0], device=e.device)
    token = token.to(e.device)
    return e[rows, token], e0[rows, token]


class WanAdapter:
    """Run a `WanTransformer3DModel` in pieces: `embed`, `run_blocks(start, stop)`, `head` (an
    `edit.runtime.ModelAdapter`)."""

    #: What the embed step yields: a data edge may `select` one of these.
    embed_outputs = ("hidden", "e", "e0", "encoder_hidden", "rotary", "grid")

    def __init__(self, transformer: torch.nn.Module, model_id: str = "transformer"):
        blocks = getattr(transformer, "blocks", None)
        if blocks is None or not hasattr(transformer, "condition_embedder"):
            raise TypeError(f"transformer: expected a diffusers WanTransformer3DModel, got {type(transformer).__name__}")
        self.model = transformer
        self.model_id = model_id
        self._digest = DigestCache()
        self.blocks = blocks
        self.num_blocks = len(blocks)
        self.patch_size = tuple(transformer.config.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def describe(self, latent_shape: tuple[int, ...], version: tuple | None = None) -> dict[str, Any]:
        """This model's part of a plan's fingerprint and the shape of one residual at `latent_shape`."""
        m = self.model
        config = m.config
        p_t, p_h, p_w = self.patch_size
        tokens = latent_shape[2] // p_t * (latent_shape[3] // p_h) * (latent_shape[4] // p_w)
        return {"fingerprint": {"model": f"{type(m).__name__}:{config_digest(m)}", "weights": self._digest(m, version),
                                "dtype": str(m.dtype)},
                "residual_shape": (latent_shape[0], tokens, config.num_attention_heads * config.attention_head_dim)}

    def block_seconds(self, latent_shape: tuple[int, ...], repeats: int = 3) -> float:
        """Median wall time of one block at `latent_shape` (the prefetch cost model's compute clock)."""
        import time

        m = self.model
        device = next(m.parameters()).device
        latents = torch.zeros((latent_shape[0], m.config.in_channels, *latent_shape[2:]), dtype=self.dtype, device=device)
        text = torch.zeros(latent_shape[0], 16, m.config.text_dim, dtype=self.dtype, device=device)
        with torch.no_grad():
            ctx = self.embed(latents, torch.full((latent_shape[0],), 500.0, device=device), text)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.run_blocks(0, 1, ctx.hidden, ctx)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
        return max(sorted(times)[len(times) // 2], 1e-9)

    def check_latents(self, latents: torch.Tensor, channels: int | None = None) -> None:
        """Raise ValueError when the latent video cannot be patchified by this model (`channels`:
        the latents' own, when a condition joins them; default the model's input channels)."""
        if latents.ndim != 5:
            raise ValueError(f"latents: expected 5 dims (batch, channels, frames, height, width), got {tuple(latents.shape)}")
        channels = self.model.config.in_channels if channels is None else channels
        if latents.shape[1] != channels:
            raise ValueError(f"latents: the model expects {channels} channels, got {latents.shape[1]}")
        for size, patch, what in zip(latents.shape[2:], self.patch_size, ("frames", "height", "width")):
            if size % patch:
                raise ValueError(f"latents: latent {what} {size} is not a multiple of the patch size {patch}")

    def embed(self, latents: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
              encoder_hidden_states_image: torch.Tensor | None = None) -> EmbedOutput:
        """Patch embedding, RoPE, time/text condition embedding (the forward's prefix)."""
        m = self.model
        batch, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.patch_size
        rotary = m.rope(latents)
        hidden = m.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()
        seq_len = None
        if timestep.ndim == 2:  # Wan2.2 ti2v: one timestep per token
            seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        e, e0, encoder_hidden, image = m.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=seq_len)
        e0 = e0.unflatten(2, (6, -1)) if seq_len is not None else e0.unflatten(1, (6, -1))
        if image is not None:
            encoder_hidden = torch.concat([image, encoder_hidden], dim=1)
        return EmbedOutput(hidden, e, e0, encoder_hidden, rotary,
                           (batch, frames // p_t, height // p_h, width // p_w),
                           None if seq_len is None else _sample_token(timestep.unflatten(0, (-1, seq_len))))

    def signals(self, ctx: EmbedOutput) -> dict[str, torch.Tensor]:
        """The policy signals of one forward: TeaCache's `e` (diffusers `temb`) and `e0`
        (`timestep_proj`), and the text condition `encoder_hidden`. With a timestep per patch
        (Wan2.2 TI2V) `e` and `e0` are one value per sample, as with one timestep: those of the
        patch that carries the sample's denoising timestep (an image-to-video run's first-frame
        patches carry 0 at every step, so the per-patch tensors would dilute the step's change)."""
        e, e0 = _per_sample(ctx.e, ctx.e0, ctx.sample_token)
        return {"e": e, "e0": e0, "encoder_hidden": ctx.encoder_hidden}

    def branch_context(self, branch: str, **info: Any):
        """diffusers' `transformer.cache_context(branch, step_index=..., ...)`, as `WanPipeline` runs
        each branch in, so diffusers' own cache hooks work under the EDiT runtime."""
        return self.model.cache_context(branch, **info)

    def time_signals(self, timestep: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """{e, e0} for `timestep`, bit-identical to what `embed` computes (they do not depend on the
        text values, only on the text dtype), so a static policy can be folded ahead of time."""
        m = self.model
        seq_len = None
        if timestep.ndim == 2:
            seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        batch = timestep.shape[0] // (seq_len or 1)
        text = torch.zeros(batch, 1, m.config.text_dim, dtype=dtype, device=timestep.device)
        token = None if seq_len is None else _sample_token(timestep.unflatten(0, (-1, seq_len)))
        e, e0, _, _ = m.condition_embedder(timestep, text, None, timestep_seq_len=seq_len)
        e, e0 = _per_sample(e, e0.unflatten(2, (6, -1)) if seq_len is not None else e0.unflatten(1, (6, -1)), token)
        return {"e": e, "e0": e0}

    def run_blocks(self, start: int, stop: int, hidden: torch.Tensor, ctx: EmbedOutput) -> torch.Tensor:
        """blocks[start:stop] applied in order; returns the real output of the last block."""
        for block in self.blocks[start:stop]:
            hidden = block(hidden, ctx.encoder_hidden, ctx.e0, ctx.rotary)
        return hidden

    def head(self, hidden: torch.Tensor, ctx: EmbedOutput) -> torch.Tensor:
        """Output norm with the shift/scale modulation, projection, unpatchify."""
        m = self.model
        temb = ctx.e
        table = m.scale_shift_table
        if temb.ndim == 3:  # Wan2.2 ti2v: per-token modulation
            shift, scale = (table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden.device), scale.to(hidden.device)
        hidden = (m.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = m.proj_out(hidden)
        batch, frames, height, width = ctx.grid
        p_t, p_h, p_w = self.patch_size
        hidden = hidden.reshape(batch, frames, height, width, p_t, p_h, p_w, -1)
        hidden = hidden.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None) -> torch.Tensor:
        """The whole forward in pieces; equal to `transformer(...)[0]`."""
        ctx = self.embed(latents, timestep, encoder_hidden_states, encoder_hidden_states_image)
        return self.head(self.run_blocks(0, self.num_blocks, ctx.hidden, ctx), ctx)
