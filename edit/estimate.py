"""How long a generation will take, estimated before it starts, so that a long run can say so.

Two short measurements, neither of them a full forward: one transformer block at the run's own
size (attention grows with the square of the tokens, so no smaller size predicts it), and the VAE
decoding one latent frame at a small size, scaled by the pixels to decode (its convolutions grow
linearly with them). Blocks a static plan skips are not counted; cells decided at run time are
counted as computed, so the estimate is an upper bound for them.
"""

from __future__ import annotations

import time

import attrs


@attrs.frozen
class RunEstimate:
    tokens: int  # patches one transformer forward attends over
    forwards: int  # transformer forwards: steps times guidance branches
    denoise_seconds: float
    decode_seconds: float

    @property
    def seconds(self) -> float:
        return self.denoise_seconds + self.decode_seconds

    def describe(self) -> str:
        return (f"{self.tokens} tokens per forward, {self.forwards} forwards: about {_clock(self.denoise_seconds)} "
                f"denoising and {_clock(self.decode_seconds)} decoding (estimated)")


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def estimate_run(pipe, plan, refine_above: float = 5.0) -> RunEstimate:
    """The estimate for running `plan` (compiled for its size, steps and branches) on `pipe`; a first
    estimate past `refine_above` seconds times the decoder again at a larger, truer size."""

    spec = plan.spec
    shape = tuple(spec.latent_shape)
    adapter = pipe.adapter
    p_t, p_h, p_w = adapter.patch_size
    tokens = shape[2] // p_t * (shape[3] // p_h) * (shape[4] // p_w)
    forwards = spec.num_steps * len(spec.branches)
    computed = 1.0 - float(plan.stats().get("predicted_skip_ratio") or 0.0)
    block = adapter.block_seconds(shape, repeats=1)
    denoise = block * spec.num_blocks * forwards * computed

    # the first latent frame decodes to one frame, every other to `vae_scale_factor_temporal`
    pixels = (1 + (shape[2] - 1) * pipe.vae_scale_factor_temporal) * shape[3] * shape[4]
    decode = _decode_rate(pipe, shape, 8) * pixels  # small: its fixed costs overstate the rate
    if denoise + decode >= refine_above:
        decode = _decode_rate(pipe, shape, 16) * pixels
    return RunEstimate(tokens, forwards, denoise, decode)


def _decode_rate(pipe, shape: tuple[int, ...], side: int, repeats: int = 2) -> float:
    """Seconds per latent pixel of output for the VAE decoding one latent frame of side x side."""
    import torch

    vae = pipe.vae
    param = next(vae.parameters())
    latents = torch.zeros((1, shape[1], 1, side, side), dtype=param.dtype, device=param.device)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            vae.decode(latents, return_dict=False)
            times.append(time.perf_counter() - start)
    return min(times) / (side * side)
