"""Train the toy Wan on the procedural clips: `python -m edit.toy.train [--workdir DIR] [--out DIR]`.

Three phases, each resumable from the checkpoint in `--workdir` (rerun the same command after an
interrupt and it carries on from the last saved step, with the same random streams):

1. "vae": the VAE (`AutoencoderKLWan`, x4 in time and space) learns to reconstruct clips from
   32x32 crops of a pool rendered once (its convolutions are translation-invariant, so crops cost
   a fraction of full frames and teach the same weights): 5-frame crops first (its first frame
   alone and one 4-frame chunk: the spatial code, cheaply), then for the last `vae_long_steps`
   all 17 frames, because the causal cache carried from one chunk into the next holds only for as
   many chunks as training showed (a VAE that saw 5 frames wrote latent frame 1 unlike frames
   2-4, and decoded frames past the fifth at 17 dB);
2. "transformer": a pool of full 17x64x64 clips is encoded once (the posterior mode); the
   per-channel mean and std of those latents become the VAE's `latents_mean`/`latents_std`, as
   Wan's VAE config has; the transformer and the text encoder learn flow matching in that
   normalised latent space, exactly as Wan samples it: x_t = (1 - s) x0 + s noise with s drawn
   through the same shift as the scheduler's `flow_shift`, the target noise - x0 (UniPC
   `flow_prediction`), timestep 1000 s, and captions dropped to "" (the pipeline's negative
   prompt) one time in ten, for guidance;
3. "decoder" (optional, `decoder_steps`, 0 by default): the decoder alone on full 17-frame crops,
   the encoder frozen (so the latents of phase 2 do not move): more reconstruction quality on a
   finished transformer without training it again.

A checkpoint refuses a config that differs in a field of a phase it has begun; fields of later
phases may change (e.g. a longer decoder phase on a finished transformer).

The text encoder (a two-layer UMT5 over the grammar's words, `edit.toy.words`) is trained with the
transformer rather than frozen: random weights would hand the transformer a fixed mixing of
neighbouring words it must undo, and learning costs almost nothing beside the transformer (two
layers over under 20 tokens). The prompt embeddings are made by the pipeline's own
`_get_t5_prompt_embeds`, so training sees exactly what generation feeds the transformer.

The result is written with `save_pretrained` as a complete pipeline folder (safetensors).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from edit.toy import data
from edit.toy.model import WEIGHTS


TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                   out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=8, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
TEXT_ENCODER = dict(d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=16, dropout_rate=0.0,
                    relative_attention_max_distance=64)
# x4 in time and space (latents 5x16x16 for 17x64x64): on a CPU budget the x8 VAE learned these
# clips too slowly (19 dB after 600 steps against 22 dB for x4 at the same cost)
# scale_factor_spatial says so to the pipeline, which otherwise assumes Wan's x8 and asks for latents
# of half the size (8x8 for 64x64), decoded to 32x32
VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
           scale_factor_spatial=4, scale_factor_temporal=4)
FLOW_SHIFT = 3.0


@attrs.frozen
class Config:
    seed: int = 0
    vae_steps: int = 2400
    vae_batch: int = 8
    vae_lr: float = 1e-3
    vae_pool: int = 1024  # clips rendered once; each step crops some of them anew
    crop_frames: int = 5  # the frames of a crop, before the last vae_long_steps
    crop: int = 32
    vae_long_steps: int = 900  # the last steps crop all `frames` frames, at vae_long_batch
    vae_long_batch: int = 4
    vae_steady: float = 0.05  # weight of the latent's change from frame to frame, relative to its size
    decoder_steps: int = 0
    decoder_batch: int = 4
    decoder_lr: float = 6e-4
    decoder_pool: int = 256
    pool: int = 1200
    steps: int = 4800
    batch: int = 12
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    placement: str = "centred"  # the transformer's clips (`data.PLACEMENTS`); the VAE's are "anywhere"
    ema: float = 0.999  # the decay of the transformer's and text encoder's weight average (0: none)
    checkpoint_every: int = 50
    transformer: dict = attrs.field(factory=lambda: dict(TRANSFORMER))
    text_encoder: dict = attrs.field(factory=lambda: dict(TEXT_ENCODER))
    vae: dict = attrs.field(factory=lambda: dict(VAE))
    frames: int = data.FRAMES
    size: int = data.HEIGHT


#: A config small enough for a smoke test of every phase (seconds, not minutes).
SMOKE = Config(vae_steps=3, vae_batch=2, vae_pool=4, crop_frames=1, crop=16, vae_long_steps=1, vae_long_batch=1,
               decoder_steps=2, decoder_batch=1, decoder_pool=2, pool=4, steps=3, batch=2, warmup=1,
               checkpoint_every=2, frames=5, size=32,
               transformer={**TRANSFORMER, "num_layers": 2, "num_attention_heads": 2, "ffn_dim": 64},
               vae={**VAE, "base_dim": 8})


def build(config: Config) -> dict[str, Any]:
    """The untrained components, seeded."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from edit.toy import words

    tokenizer = words.tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = AutoencoderKLWan(**config.vae)
        transformer = WanTransformer3DModel(**config.transformer)
        encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=config.transformer["text_dim"],
                                              **config.text_encoder))
    condition_sharply(transformer)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT)
    return dict(transformer=transformer, vae=vae, text_encoder=encoder, tokenizer=tokenizer, scheduler=scheduler)


#: The cross-attention logit scale at initialisation (its q and k RMSNorm weights, squared)
CROSS_ATTENTION_SCALE = 4.0


def condition_sharply(transformer) -> None:
    """Let the few caption tokens win the cross-attention over the pipeline's zero padding.

    Wan pads every prompt to 512 tokens; the 500 or so padding tokens (zeros from the text
    encoder) share one key and one value, and with a default initialisation they keep most of
    each query's attention: after the first 2400-step run the ~12 real tokens held 8-16% of it, so
    the caption barely reached the transformer (a generation's colour and motion did not follow
    it). Here the padding's key and value are exactly zero (the text projection's and the
    cross-attention's key and value biases fixed at zero), so it only dilutes, and the q/k norms
    start at `CROSS_ATTENTION_SCALE` times the logit scale, so a query can put its weight on the
    words. The model stays a plain `WanTransformer3DModel`; only its starting point changes."""
    text = transformer.condition_embedder.text_embedder
    biases = [text.linear_1.bias, text.linear_2.bias]
    with torch.no_grad():
        for block in transformer.blocks:
            attn = block.attn2
            biases += [attn.to_k.bias, attn.to_v.bias]
            attn.norm_q.weight.mul_(math.sqrt(CROSS_ATTENTION_SCALE))
            attn.norm_k.weight.mul_(math.sqrt(CROSS_ATTENTION_SCALE))
        for bias in biases:
            bias.zero_()
            bias.requires_grad_(False)


class PaddedCrossAttention:
    """The cross-attention of a `condition_sharply` transformer over `length` text tokens, computed
    from the first few only (a training-time shortcut, the same function).

    The pipeline pads every prompt to 512 tokens of zeros, and with the key and value biases at zero
    each padding token has key 0 and value 0: logit 0 and nothing added, only weight in the
    softmax's sum. So the ~480 padding tokens past the ones passed are one extra key of logit
    log(count) with value 0. Training with 32 tokens then costs what 32 cost, not 512 (a third of
    the transformer's step time), and sees the same attention generation computes over 512."""

    def __init__(self, length: int = 512):
        self.length = length

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        key = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        value = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        missing = self.length - key.shape[2]
        if missing < 0:
            raise ValueError(f"encoder_hidden_states: {key.shape[2]} tokens, more than length={self.length}")
        bias = None
        if missing:
            key = torch.cat([key, key.new_zeros(*key.shape[:2], 1, key.shape[3])], dim=2)
            value = torch.cat([value, value.new_zeros(*value.shape[:2], 1, value.shape[3])], dim=2)
            bias = key.new_zeros(1, key.shape[2])
            bias[0, -1] = math.log(missing)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def cross_attention(transformer, processor) -> None:
    """Give every block's cross-attention `processor` (`PaddedCrossAttention()` to train, the stock
    `WanAttnProcessor()` to ship)."""
    for block in transformer.blocks:
        block.attn2.set_processor(processor)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _clips(rng: np.random.Generator, count: int, frames: int, size: int, placement: str = "anywhere") -> list[data.Clip]:
    """`count` clips; the VAE's (the default) put their shapes anywhere, so it reconstructs a shape
    wherever a generation puts it."""
    return [data.sample(rng, frames=frames, height=size, width=size, placement=placement) for _ in range(count)]


def _vae_batch(rng: np.random.Generator, config: Config, pool: list[data.Clip], *, frames: int,
               batch: int) -> torch.Tensor:
    """`batch` crops of `frames` frames and `config.crop` pixels square; a shorter crop starts at a
    chunk boundary (a multiple of 4 frames), so its own first frame is one the VAE sees alone."""
    crops = []
    for index in rng.integers(0, len(pool), batch):
        clip = pool[index]
        t = 4 * int(rng.integers(0, (len(clip.video) - frames) // 4 + 1))
        y, x = rng.integers(0, config.size - config.crop + 1, size=2)
        crops.append(data.to_pipeline_range(clip.video[t:t + frames, y:y + config.crop, x:x + config.crop]))
    return torch.from_numpy(np.stack(crops))


class Checkpoint:
    """One file in the work folder, written atomically: phase, step, weights, optimiser, RNG, and
    (with `elapsed`) the total seconds spent so far, so a resumed run adds to them."""

    def __init__(self, folder: Path):
        self.path = folder / "checkpoint.pt"
        self.elapsed = None  # a callable giving the seconds to record with each save
        folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Any] | None:
        return torch.load(self.path, weights_only=False) if self.path.exists() else None

    def save(self, state: dict[str, Any]) -> None:
        if self.elapsed is not None:
            state = {**state, "seconds": self.elapsed()}
        temp = self.path.with_suffix(".tmp")
        torch.save(state, temp)
        os.replace(temp, self.path)


def _bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


def _fit_autoencoder(phase: str, vae, params: list, config: Config, ckpt: Checkpoint, state: dict, log, *,
                     steps: int, lr: float, warmup: int, batch: int, pool: list[data.Clip], stream: int,
                     train_encoder: bool, frames: int, long_steps: int = 0, long_batch: int = 0,
                     extra: dict | None = None) -> None:
    """One resumable VAE phase: random crops of `pool`, L1 + MSE (L1 for sharp edges, MSE for PSNR),
    checkpointed as `phase` (with `extra` in each checkpoint). With `train_encoder` off the latents
    are made without gradients."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng([config.seed, stream])
    start = 0
    if state.get("phase") == phase:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        start = state.get("step", 0)
    vae.train()
    bar = _bar(steps, start, phase)
    recent = []
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        long = step >= steps - long_steps
        x = _vae_batch(rng, config, pool, frames=config.frames if long else frames, batch=long_batch if long else batch)
        with torch.set_grad_enabled(train_encoder):
            z = vae.encode(x).latent_dist.mode()
        recon = vae.decode(z).sample
        loss = (recon - x).abs().mean() + (recon - x).square().mean()
        if train_encoder:  # a small pull on z keeps the latent scale bounded
            loss = loss + 1e-4 * z.square().mean() + config.vae_steady * steadiness(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        psnr = 10 * math.log10(4.0 / max(float((recon.detach() - x).square().mean()), 1e-12))  # range [-1, 1]
        loss = float(loss.detach())
        bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{psnr:.1f}")
        bar.update()
        recent.append((loss, psnr))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == steps:
            # one batch of crops says little (a dark crop is easy): the log has the interval's means
            loss, psnr = (float(np.mean(v)) for v in zip(*recent))
            recent.clear()
            log(dict(phase=phase, step=step + 1, loss=loss, psnr=psnr))
            ckpt.save(dict(phase=phase, step=step + 1, vae=vae.state_dict(), opt=opt.state_dict(),
                           rng=rng.bit_generator.state, config=attrs.asdict(config), **(extra or {})))
    bar.close()
    vae.eval()


def steadiness(z: torch.Tensor) -> torch.Tensor:
    """The mean square change of the latent from one latent frame to the next, relative to its mean
    square: what keeps one code for one content over time.

    Without it the encoder wrote each latent frame in a code of its own: over held-out clips, latent
    frame 0 (the first frame, encoded alone) was uncorrelated with frame 1 (cosine -0.004 after
    removing the means) and frames 1-4 only 0.5-0.65 alike, though most of every clip (its
    background) does not move. The transformer then had to learn five codes for one shape, and its
    generations kept the caption's colour (up to 16/20) but not its motion (1-3/20): shapes changed
    or vanished from one latent frame to the next. Relative, so shrinking the latent cannot meet it."""
    if z.shape[2] < 2:
        return z.new_zeros(())
    return (z[:, :, 1:] - z[:, :, :-1]).square().mean() / z.square().mean().clamp_min(1e-6)


def train_vae(parts: dict, config: Config, ckpt: Checkpoint, state: dict, log) -> None:
    vae = parts["vae"]
    pool = _clips(np.random.default_rng([config.seed, 4]), config.vae_pool, config.frames, config.size)
    _fit_autoencoder("vae", vae, list(vae.parameters()), config, ckpt, state, log, steps=config.vae_steps,
                     lr=config.vae_lr, warmup=config.warmup, batch=config.vae_batch, pool=pool, stream=1,
                     train_encoder=True, frames=config.crop_frames, long_steps=config.vae_long_steps,
                     long_batch=config.vae_long_batch)


def train_decoder(parts: dict, config: Config, ckpt: Checkpoint, state: dict, log) -> None:
    """The decoder alone on full-length crops: the 5-frame phase never carried the causal cache
    from one 4-frame chunk into the next, and frames past the fifth decoded at about 17 dB. The
    encoder stays frozen, so the latent space (and any latent made from it) does not move: the
    transformer trained before this phase is as good after it. Its checkpoints carry the trained
    transformer and text encoder and the latent statistics, so a resumed run needs nothing else."""
    vae = parts["vae"]
    extra = dict(transformer=parts["transformer"].state_dict(), text_encoder=parts["text_encoder"].state_dict(),
                 vae_config=dict(vae.config))
    frozen = [p for m in (vae.encoder, vae.quant_conv) for p in m.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    pool = _clips(np.random.default_rng([config.seed, 6]), config.decoder_pool, config.frames, config.size)
    _fit_autoencoder("decoder", vae, [p for p in vae.parameters() if p.requires_grad], config, ckpt, state, log,
                     steps=config.decoder_steps, lr=config.decoder_lr,
                     warmup=min(config.warmup, config.decoder_steps), batch=config.decoder_batch, pool=pool,
                     stream=5, train_encoder=False, frames=config.frames, extra=extra)
    for p in frozen:
        p.requires_grad_(True)


@torch.no_grad()
def encode_pool(parts: dict, config: Config) -> tuple[torch.Tensor, list[str]]:
    vae = parts["vae"].eval()
    rng = np.random.default_rng([config.seed, 2])
    clips = _clips(rng, config.pool, config.frames, config.size, config.placement)
    latents = []
    bar = _bar(config.pool, 0, "encode")
    for i in range(0, len(clips), 8):
        x = torch.from_numpy(np.stack([data.to_pipeline_range(c.video) for c in clips[i:i + 8]]))
        latents.append(vae.encode(x).latent_dist.mode())
        bar.update(len(x))
    bar.close()
    return torch.cat(latents), [c.caption for c in clips]


def set_latent_stats(vae, latents: torch.Tensor) -> None:
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])


def normalise(vae, latents: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return (latents - mean) / std


def flow_sigmas(u: torch.Tensor, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """The scheduler's shift applied to uniform draws: where Wan's sampler spends its steps."""
    return shift * u / (1 + (shift - 1) * u)


#: the text encoder's length in training: every caption of the grammar fits (18 words at most, with
#: the end token)
ENCODED = 32


def prompt_embeds(pipe, prompts: list[str], length: int = 512, encoded: int = ENCODED) -> torch.Tensor:
    """What generation feeds the transformer (the pipeline pads to 512 tokens and zeroes the padding),
    with the text encoder run over `encoded` tokens only: its masked padding cannot change the real
    tokens, so this is the same tensor at a sixteenth of the cost of encoding 512."""
    text = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=encoded, device=torch.device("cpu"))
    return torch.cat([text, text.new_zeros(text.shape[0], length - encoded, text.shape[2])], dim=1)


def train_transformer(parts: dict, config: Config, pool: torch.Tensor, captions: list[str], ckpt: Checkpoint,
                      state: dict, log) -> None:
    from diffusers import WanPipeline
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    transformer, encoder = parts["transformer"], parts["text_encoder"]
    pipe = WanPipeline(**parts)  # for its own prompt embedding: padding and trimming as at generation
    cross_attention(transformer, PaddedCrossAttention())
    params = _trained(parts)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(config.seed + 3)
    average = [p.detach().clone() for p in params]
    if state.get("phase") == "transformer":
        transformer.load_state_dict(state["transformer"])
        encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        average = [t.clone() for t in state["ema"]] if config.ema else average
    start = state.get("step", 0) if state.get("phase") == "transformer" else 0
    transformer.train()
    encoder.train()
    bar = _bar(config.steps, start, "transformer")
    for step in range(start, config.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, config.steps, config.lr, config.warmup)
        index = torch.randint(len(pool), (config.batch,), generator=gen)
        x0 = pool[index]
        drop = torch.rand(config.batch, generator=gen) < config.caption_dropout
        prompts = ["" if d else captions[int(i)] for i, d in zip(index, drop)]
        text = prompt_embeds(pipe, prompts, length=ENCODED)  # PaddedCrossAttention stands for the rest of the 512
        noise = torch.randn(x0.shape, generator=gen)
        sigma = flow_sigmas(torch.rand(config.batch, generator=gen))
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = transformer(xt, sigma * 1000, text, return_dict=False)[0]
        loss = (pred.float() - (noise - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if config.ema:  # the usual warm-up: the average forgets its random start quickly
            with torch.no_grad():
                torch._foreach_lerp_(average, [p.detach() for p in params], 1 - min(config.ema, (1 + step) / (10 + step)))
        loss = float(loss.detach())
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            log(dict(phase="transformer", step=step + 1, loss=loss))
            ckpt.save(dict(phase="transformer", step=step + 1, transformer=transformer.state_dict(),
                           text_encoder=encoder.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                           vae=parts["vae"].state_dict(), vae_config=dict(parts["vae"].config),
                           ema=average if config.ema else None, config=attrs.asdict(config)))
    bar.close()
    cross_attention(transformer, WanAttnProcessor())
    use_average(parts, config, average if config.ema else None)


def use_average(parts: dict, config: Config, average: list[torch.Tensor] | None) -> None:
    """The transformer and text encoder take their weight average (what is shipped: sampling from a
    small-batch run's last step is noisier than from its average), and go to eval mode."""
    if average is not None:
        with torch.no_grad():
            for p, a in zip(_trained(parts), average, strict=True):
                p.copy_(a)
    parts["transformer"].eval()
    parts["text_encoder"].eval()


def _trained(parts: dict) -> list[torch.nn.Parameter]:
    """The transformer's and text encoder's trained parameters, in one fixed order (the optimiser's
    and the weight average's); `condition_sharply`'s frozen biases are not among them."""
    return [p for m in (parts["transformer"], parts["text_encoder"]) for p in m.parameters() if p.requires_grad]


@torch.no_grad()
def reconstruction_psnr(vae, config: Config, count: int = 16) -> float:
    """PSNR in dB, over [0, 1] pixels, of held-out full clips (a seed stream training never drew)."""
    rng = np.random.default_rng([config.seed, 9])
    clips = _clips(rng, count, config.frames, config.size)
    errors = []
    for clip in clips:
        x = torch.from_numpy(data.to_pipeline_range(clip.video))[None]
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        errors.append(float(((recon - x) / 2).square().mean()))
    return 10 * math.log10(1.0 / float(np.mean(errors)))


#: The phases in the order they run. The decoder phase comes last: it freezes the encoder, so the
#: latents the transformer learns are the same before and after it, and it can be lengthened (its
#: fields changed) on a finished transformer without training that again.
PHASES = ("vae", "transformer", "decoder")
#: The first phase each config field changes; a checkpoint refuses another value only for fields of
#: phases it has begun (checkpoint_every changes no weight).
FIELD_PHASE = {"seed": "vae", "vae_steps": "vae", "vae_batch": "vae", "vae_lr": "vae", "vae_pool": "vae",
               "crop_frames": "vae", "crop": "vae", "vae_long_steps": "vae", "vae_long_batch": "vae", "vae_steady": "vae", "warmup": "vae", "vae": "vae", "size": "vae",
               "pool": "transformer", "steps": "transformer", "batch": "transformer", "lr": "transformer",
               "caption_dropout": "transformer", "placement": "transformer", "ema": "transformer", "transformer": "transformer", "text_encoder": "transformer",
               "frames": "transformer", "decoder_steps": "decoder", "decoder_batch": "decoder",
               "decoder_lr": "decoder", "decoder_pool": "decoder"}


def _conflicts(saved: dict, config: Config, phase: str) -> list[str]:
    begun = PHASES[:PHASES.index(phase) + 1]
    now = attrs.asdict(config)
    return sorted(k for k, first in FIELD_PHASE.items() if first in begun and saved.get(k) != now[k])


def run(config: Config, workdir: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    ckpt = Checkpoint(workdir)
    state = ckpt.load() or {}
    phase = state.get("phase", "vae")
    if state and (conflicts := _conflicts(state["config"], config, phase)):
        raise ValueError(f"workdir: {workdir} holds a checkpoint of another config (in phase {phase!r}: "
                         f"{', '.join(conflicts)} differ); use another --workdir")
    before = state.get("seconds", 0.0)  # the time the checkpoint's earlier runs spent
    log_path = workdir / "log.jsonl"

    def elapsed() -> float:
        return round(time.perf_counter() - started + before, 1)

    def log(record: dict) -> None:
        record["seconds"] = elapsed()
        with open(log_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    ckpt.elapsed = elapsed
    torch.manual_seed(config.seed)
    parts = build(config)
    at = PHASES.index(phase)
    if at == 0:
        train_vae(parts, config, ckpt, state, log)
    else:
        parts["vae"].load_state_dict(state["vae"])
    finished = phase == "transformer" and state.get("step") == config.steps
    if at <= 1 and not finished:
        pool, captions = encode_pool(parts, config)
        set_latent_stats(parts["vae"], pool)
        train_transformer(parts, config, normalise(parts["vae"], pool), captions, ckpt, state, log)
    else:  # a finished transformer: its weights and latent statistics are in the checkpoint
        parts["transformer"].load_state_dict(state["transformer"])
        parts["text_encoder"].load_state_dict(state["text_encoder"])
        stats = state["vae_config"]
        parts["vae"].register_to_config(latents_mean=stats["latents_mean"], latents_std=stats["latents_std"])
        # a transformer-phase checkpoint holds the last step's weights and the average apart; the
        # decoder phase's holds the weights already averaged
        use_average(parts, config, state.get("ema") if phase == "transformer" and config.ema else None)
    train_decoder(parts, config, ckpt, state, log)
    psnr = reconstruction_psnr(parts["vae"], config)
    from edit.pipeline import EditWanPipeline

    pipe = EditWanPipeline(**parts)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    with open(log_path) as handle:
        records = [json.loads(line) for line in handle]
    summary = dict(seconds=elapsed(), reconstruction_psnr=round(psnr, 2), config=attrs.asdict(config))
    for name in PHASES:
        last = [r for r in records if r["phase"] == name]
        if last:
            summary[f"{name}_final_loss"] = last[-1]["loss"]
    (out / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(dict(phase="done", **{k: v for k, v in summary.items() if k != "config"}))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edit.toy.train", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(Path.home() / ".cache" / "edit-toy-train"),
                        help="checkpoint and log folder; rerun with the same one to resume (default: %(default)s)")
    parser.add_argument("--out", default=str(WEIGHTS), help="where the pipeline is saved (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="a tiny config that runs every phase in seconds")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    summary = run(SMOKE if args.smoke else Config(), Path(args.workdir), Path(args.out))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
