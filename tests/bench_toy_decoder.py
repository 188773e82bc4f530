"""How much more reconstruction the shipped toy VAE gets from more decoder training:
`python tests/bench_toy_decoder.py [--steps 800] [--folder DIR]`.

Runs the training script's phase 3 (`train.train_decoder`: the decoder alone on full 17-frame
crops, the encoder frozen, so the shipped transformer's latents do not move) from the shipped
weights for `--steps` steps, and prints the held-out reconstruction PSNR (`train.reconstruction_psnr`)
before and after, with the minutes it took: what a longer VAE budget would buy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import attrs
import torch

import edit
from edit.toy import train


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--folder", default=None, help="a trained toy pipeline folder (default: the shipped one)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pipe = edit.toy_pipeline(folder=args.folder)
    parts = dict(pipe.components)
    config = attrs.evolve(train.Config(), decoder_steps=args.steps, checkpoint_every=max(1, args.steps))
    with torch.no_grad():
        before = train.reconstruction_psnr(parts["vae"].eval(), config)
    with tempfile.TemporaryDirectory() as work:
        ckpt = train.Checkpoint(Path(work))
        start = time.perf_counter()
        train.train_decoder(parts, config, ckpt, {}, log=lambda record: None)
        minutes = (time.perf_counter() - start) / 60
    with torch.no_grad():
        after = train.reconstruction_psnr(parts["vae"].eval(), config)
    out = dict(steps=args.steps, minutes=round(minutes, 1), psnr_before=round(before, 2), psnr_after=round(after, 2))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
