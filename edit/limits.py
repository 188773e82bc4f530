"""What a Wan model can take: video sizes inside its RoPE table, and a rough memory estimate.

Read from the configs alone (no weights), so the CLI can refuse a size before loading a checkpoint.
Callers pass the names their user typed (`height` for the API, `--height` for the CLI), so every
refusal names the thing to change.
"""

from __future__ import annotations

import math
import os
from typing import Any

import attrs

SIZE_NAMES = {"num_frames": "num_frames", "height": "height", "width": "width"}


@attrs.frozen
class ModelLimits:
    patch_size: tuple[int, int, int]
    rope_max_seq_len: int
    vae_temporal: int
    vae_spatial: int
    # for the memory estimate
    inner_dim: int
    ffn_dim: int
    vae_channels: int
    num_train_timesteps: int | None = None

    @classmethod
    def from_configs(cls, transformer: dict[str, Any], vae: dict[str, Any],
                     scheduler: dict[str, Any] | None = None) -> ModelLimits:
        downsample = vae.get("temperal_downsample", [False, True, True])
        temporal = vae.get("scale_factor_temporal") or 2 ** sum(bool(d) for d in downsample)
        spatial = vae.get("scale_factor_spatial") or 2 ** len(downsample)
        return cls(patch_size=tuple(transformer.get("patch_size", (1, 2, 2))),
                   rope_max_seq_len=int(transformer.get("rope_max_seq_len", 1024)),
                   vae_temporal=int(temporal), vae_spatial=int(spatial),
                   inner_dim=int(transformer.get("num_attention_heads", 40)) * int(transformer.get("attention_head_dim", 128)),
                   ffn_dim=int(transformer.get("ffn_dim", 13824)),
                   vae_channels=int(vae.get("base_dim", 96)) * max(vae.get("dim_mult", [1, 2, 4, 4])),
                   num_train_timesteps=(scheduler or {}).get("num_train_timesteps"))

    @classmethod
    def from_pipeline(cls, pipe) -> ModelLimits:
        limits = cls.from_configs(dict(pipe.transformer.config), dict(pipe.vae.config), dict(pipe.scheduler.config))
        # The pipeline's own factors win: they are what its __call__ uses.
        return attrs.evolve(limits, vae_temporal=pipe.vae_scale_factor_temporal, vae_spatial=pipe.vae_scale_factor_spatial)

    def fit_frames(self, num_frames: int) -> int:
        """The frame count diffusers' Wan pipeline actually runs (it rounds to k * temporal + 1)."""
        t = self.vae_temporal
        return num_frames if num_frames % t == 1 else num_frames // t * t + 1

    def tokens(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Patches along time, height and width."""
        latent_frames = (self.fit_frames(num_frames) - 1) // self.vae_temporal + 1
        p_t, p_h, p_w = self.patch_size
        return (latent_frames // p_t, height // self.vae_spatial // p_h, width // self.vae_spatial // p_w)

    def check_size(self, num_frames: int, height: int, width: int, names: dict[str, str] = SIZE_NAMES) -> None:
        """ValueError, naming the argument, when a size runs past the RoPE table (diffusers would fail
        deep inside the transformer after encoding the prompt)."""
        rope = self.rope_max_seq_len
        p_t, p_h, p_w = self.patch_size
        grid = self.tokens(num_frames, height, width)
        largest = {"num_frames": ((rope * p_t - 1) * self.vae_temporal + 1, "frames", "latent frames"),
                   "height": (rope * p_h * self.vae_spatial, "rows", "latent rows"),
                   "width": (rope * p_w * self.vae_spatial, "columns", "latent columns")}
        for (arg, value), count in zip((("num_frames", num_frames), ("height", height), ("width", width)), grid):
            if count > rope:
                most, unit, _ = largest[arg]
                raise ValueError(f"{names[arg]}: {value} gives {count} patch {unit}, more than this model's RoPE "
                                 f"table holds ({rope}, rope_max_seq_len); at most {most}")

    def estimate_bytes(self, num_frames: int, height: int, width: int, steps: int, weight_bytes: int,
                       dtype_bytes: int = 4) -> int:
        """A rough lower bound of the peak memory of one generation (weights included).

        Counts what certainly exists at once: the weights, one block's activations over all tokens
        (attention assumed memory-efficient, so no tokens-squared term), the VAE decoder's working
        set for one latent frame at full resolution, the decoded video and its float copies, and the
        plan (a few KB per step). Good enough to refuse requests that are off by orders of magnitude.
        """
        tokens = math.prod(self.tokens(num_frames, height, width))
        frames = self.fit_frames(num_frames)
        transformer = tokens * (self.ffn_dim + 6 * self.inner_dim) * dtype_bytes * 2
        decoder = self.vae_temporal * height * width * self.vae_channels * 4 * 6
        video = frames * height * width * 3 * 4 * 3
        plan = steps * 8 * 1024
        return weight_bytes + transformer + decoder + video + plan


def machine_bytes() -> int:
    """Physical memory of this machine (host RAM, plus the current GPU's when CUDA is available)."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        import torch

        if torch.cuda.is_available():
            total += torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    except Exception:  # no usable GPU: host memory is the machine
        pass
    return total


def gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB"
