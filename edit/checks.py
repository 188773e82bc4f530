"""Input checks of the user API: a bad value raises TypeError/ValueError naming the argument and
what is allowed, before any model work (diffusers would accept it silently or fail deep inside).

Where diffusers' `WanPipeline` defines a behaviour it is kept, not refused: `guidance_scale <= 1`
turns classifier-free guidance off, and `num_frames` is rounded to k * 4 + 1 with a warning.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
SEED_RANGE = (0, 2 ** 64 - 1)  # what torch.Generator.manual_seed takes without wrapping around


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, low: int = 1, what: str = "") -> int:
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int >= {low}{what}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}{what}, got {value}")
    return int(value)


def check_finite(value: Any, name: str, what: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite number{what}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number{what}, got {value}")
    return float(value)


def check_seed(value: Any, name: str = "seed") -> int:
    low, high = SEED_RANGE
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int in [0, 2**64 - 1], got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [0, 2**64 - 1], got {value}")
    return int(value)


def check_call(pipe, *, height: Any, width: Any, num_frames: Any, guidance_scale: Any,
               num_videos_per_prompt: Any, max_sequence_length: Any, output_type: Any) -> None:
    """The arguments of `EditWanPipeline.__call__` that diffusers does not check itself."""
    from edit.limits import ModelLimits

    check_int(height, "height")
    check_int(width, "width")
    check_int(num_frames, "num_frames", what=" (rounded by diffusers to k * 4 + 1)")
    check_finite(guidance_scale, "guidance_scale", " (<= 1 turns classifier-free guidance off, as in diffusers)")
    check_int(num_videos_per_prompt, "num_videos_per_prompt")
    check_int(max_sequence_length, "max_sequence_length", what=" (tokens of the prompt kept)")
    if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: expected one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
    if pipe.config.boundary_ratio is not None:
        if getattr(pipe, "transformer_2", None) is None:
            raise ValueError(f"boundary_ratio: {pipe.config.boundary_ratio!r} switches to a second expert below it, "
                             "but the pipeline has no transformer_2; give one or set boundary_ratio=None")
        if getattr(pipe, "transformer", None) is None:
            raise ValueError("transformer: EditWanPipeline needs a `transformer` component (the high-noise expert)")
    if getattr(pipe, "transformer", None) is not None and getattr(pipe, "vae", None) is not None:
        ModelLimits.from_pipeline(pipe).check_size(num_frames, height, width)


def check_enable_cache(*, store: Any, fold: Any) -> None:
    """The arguments of `EditWanPipeline.enable_cache` that its own body does not check."""
    if not isinstance(fold, bool):
        raise TypeError(f"fold: expected True or False, got {type(fold).__name__} {fold!r}")
    if isinstance(store, type):
        raise TypeError(f"store: expected a store instance such as {store.__name__}(), got the class itself")


_WARNED: set = set()


def _architecture(transformer: Any) -> tuple[int, int]:
    """(layers, hidden width): what TEACACHE_ARCHITECTURES records for each coefficient set."""
    config = transformer.config
    return int(config.num_layers), int(config.num_attention_heads) * int(config.attention_head_dim)


def variant_for(transformer: Any, task: str = "t2v") -> str | None:
    """The TeaCache coefficient set fitted on this transformer's architecture (layers, width), when
    one was, preferring those fitted for `task` ("t2v" or "i2v"): `enable_cache("teacache")` then
    uses it without being told (the toy's own; t2v-14B's on a 14B text-to-video checkpoint,
    i2v-480P's on a 14B image-to-video one); None when none was."""
    from edit.passes.policies import TEACACHE_ARCHITECTURES

    if getattr(transformer, "config", None) is None:
        return None
    have = _architecture(transformer)
    fitted = [variant for variant, arch in TEACACHE_ARCHITECTURES.items() if arch == have]
    return next((v for v in fitted if v.startswith(task)), fitted[0] if fitted else None)


def check_variant(policy: Any, transformer: Any) -> None:
    """Warn once per (variant, architecture) when TeaCache's published coefficients were fitted on
    another architecture than the transformer's (layers, width): its skips then mean little;
    `edit.cache.calibrate_teacache` fits coefficients for this model."""
    from edit.passes.policies import TEACACHE_ARCHITECTURES

    variant = getattr(policy, "wan_variant", None)
    if not getattr(policy, "published", False) or variant not in TEACACHE_ARCHITECTURES or transformer is None:
        return
    have = _architecture(transformer)
    fitted = TEACACHE_ARCHITECTURES[variant]
    if have != fitted and (variant, have) not in _WARNED:
        _WARNED.add((variant, have))
        import warnings

        warnings.warn(f"teacache: the {variant} coefficients were fitted on {fitted[0]} layers of width {fitted[1]}; "
                      f"this transformer has {have[0]} layers of width {have[1]}. Fit its own with "
                      "edit.cache.calibrate_teacache and pass coefficients=...", UserWarning, stacklevel=3)


def check_prefetch(prefetch: Any, costs: Any) -> Any:
    """`enable_cache`'s `prefetch` and `costs`; returns the `CostModel` they give (None: measure)."""
    from edit.passes.compiler import CostModel

    if costs is not None and not isinstance(costs, CostModel):
        raise TypeError(f"costs: expected an edit.passes.compiler.CostModel, got {type(costs).__name__}")
    if isinstance(prefetch, dict):
        allowed = {"bandwidth", "latency", "block_seconds"}
        if set(prefetch) - allowed or "bandwidth" not in prefetch:
            raise ValueError(f"prefetch: a dict gives the slow tier's costs, {{'bandwidth': bytes/s > 0, "
                             f"'latency': seconds >= 0, 'block_seconds': seconds > 0}}; got {prefetch!r}")
        try:
            given = CostModel(**prefetch)
        except (TypeError, ValueError) as err:
            raise ValueError(f"prefetch: {err}") from None
        if costs is not None and costs != given:
            raise ValueError("costs: given twice (prefetch={...} and costs=); give one")
        return given
    if prefetch != "auto" and prefetch is not None and (isinstance(prefetch, bool) or
                                                      not isinstance(prefetch, int) or prefetch < 1):
        raise ValueError(f"prefetch: expected 'auto', None, a dict of tier costs or an int >= 1 (cells ahead "
                         f"of each read), got {prefetch!r}")
    return costs


#: What each tiny transformer override may be, beyond its type.
_POSITIVE_INTS = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                  "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len")


def check_tiny(seed: Any, transformer: dict[str, Any], vae: dict[str, Any] | None) -> None:
    """Arguments of `tiny_components`/`tiny_pipeline` (the merged transformer config and vae overrides)."""
    check_seed(seed)
    for name in _POSITIVE_INTS:
        check_int(transformer[name], name)
    if transformer["attention_head_dim"] % 2:
        raise ValueError("attention_head_dim: expected an even int (RoPE rotates pairs of channels), "
                         f"got {transformer['attention_head_dim']}")
    patch = transformer["patch_size"]
    if not isinstance(patch, (tuple, list)) or len(patch) != 3 or not all(_is_int(p) and p >= 1 for p in patch):
        raise ValueError(f"patch_size: expected 3 ints >= 1 (frames, height, width), got {patch!r}")
    latent_channels = len((vae or {}).get("latents_mean", range(16)))
    for name in ("in_channels", "out_channels"):
        if transformer[name] != latent_channels:
            raise ValueError(f"{name}: expected {latent_channels} (the VAE's latent channels: its latents_mean "
                             f"and latents_std), got {transformer[name]}")
    eps = check_finite(transformer["eps"], "eps", " > 0")
    if eps <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps}")
    if not isinstance(transformer["cross_attn_norm"], bool):
        raise TypeError(f"cross_attn_norm: expected True or False, got {transformer['cross_attn_norm']!r}")
    if transformer["qk_norm"] is not None and not isinstance(transformer["qk_norm"], str):
        raise TypeError(f"qk_norm: expected a str or None, got {transformer['qk_norm']!r}")
