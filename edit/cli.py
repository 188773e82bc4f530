"""The `edit` command line: `edit generate PROMPT ...` writes a video, prints the plan summary and,
with `--cache`, the cache stats; `--plan FILE` draws the plan (graphviz)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".gif")
TINY_SIZE = (64, 96)
FULL_SIZE = (480, 832)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise CliError(message)


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise CliError(f"{name}: expected an integer >= 1, got {text!r}") from None
        if value < 1:
            raise CliError(f"{name}: expected an integer >= 1, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edit", description="EDiT: inspectable, editable step caching for Wan text-to-video.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="generate a video from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--model", default="tiny", help="'tiny' (embedded seeded model), a local pipeline folder, or a hub id")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=_positive_int("--steps"), default=20)
    gen.add_argument("--frames", type=_positive_int("--frames"), default=33)
    gen.add_argument("--height", type=_positive_int("--height"), default=None,
                     help=f"default {TINY_SIZE[0]} on the tiny model, {FULL_SIZE[0]} otherwise")
    gen.add_argument("--width", type=_positive_int("--width"), default=None,
                     help=f"default {TINY_SIZE[1]} on the tiny model, {FULL_SIZE[1]} otherwise")
    gen.add_argument("--guidance", type=float, default=5.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=_positive_int("--fps"), default=16)
    gen.add_argument("--out", default="out.mp4", help="output video, .mp4 (ffmpeg) or .gif (Pillow)")
    cache = gen.add_argument_group("step caching")
    cache.add_argument("--cache", default=None, metavar="POLICY",
                       help="a registered cache policy: teacache, fbcache, none, ... (default: no cache)")
    cache.add_argument("--threshold", type=float, default=None, help="the policy's rel_l1_thresh")
    cache.add_argument("--granularity", default="stack", help="stack, per_block or an int k (units of k blocks)")
    cache.add_argument("--wan-variant", default=None, help="TeaCache coefficients: t2v-1.3B, t2v-14B, i2v-480P, i2v-720P")
    gen.add_argument("--plan", default=None, metavar="FILE",
                     help="also draw the plan: .svg, .png, .pdf or .dot (graphviz; see --level)")
    gen.add_argument("--level", default="units", help="detail of --plan: nodes, units or steps")
    return parser


def enable_cache(pipe, args: argparse.Namespace) -> None:
    if args.cache is None:
        for flag in ("threshold", "wan_variant"):
            if getattr(args, flag) is not None:
                raise CliError(f"--{flag.replace('_', '-')}: needs --cache POLICY")
        return
    granularity = int(args.granularity) if args.granularity.lstrip("-").isdigit() else args.granularity
    kwargs = {}
    if args.threshold is not None:
        kwargs["rel_l1_thresh"] = args.threshold
    if args.wan_variant is not None:
        kwargs["wan_variant"] = args.wan_variant
    try:
        pipe.enable_cache(args.cache, num_inference_steps=args.steps, granularity=granularity, **kwargs)
    except (TypeError, ValueError) as err:  # names the policy argument; TypeError: e.g. an unknown keyword
        raise CliError(f"--cache {args.cache}: {str(err).splitlines()[0]}") from None


def check_plan_path(path: str | None, level: str) -> Path | None:
    from edit.graph import LEVELS
    from edit.graph.draw import FORMATS

    if level not in LEVELS:
        raise CliError(f"--level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise CliError(f"--plan: expected a file ending in {', '.join('.' + f for f in FORMATS)}, got {path!r}")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise CliError(f"--plan: folder {str(out.parent)!r} does not exist")
    return out


def check_output(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise CliError(f"--out: expected a file ending in {' or '.join(VIDEO_SUFFIXES)}, got {path!r}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"--out: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CliError(f"--out: {path!r} is not writable")
    return out


def load_pipeline(model: str):
    import torch

    import edit

    if model == "tiny":
        return edit.tiny_pipeline(seed=0)
    looks_local = model.startswith((".", "/", "~")) or os.sep in model and Path(model).expanduser().exists()
    if looks_local:
        folder = Path(model).expanduser()
        if not (folder / "model_index.json").is_file():
            raise CliError(f"--model: {model!r} is not a pipeline folder (no model_index.json); "
                           "expected 'tiny', a folder written by save_pretrained, or a hub id")
        model = str(folder)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else None
    try:
        return edit.EditWanPipeline.from_pretrained(model, dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"--model: cannot load {model!r}: {first}") from None


def check_size(pipe, height: int, width: int) -> None:
    patch = pipe.transformer.config.patch_size
    for name, value, p in (("--height", height, patch[1]), ("--width", width, patch[2])):
        multiple = max(16, pipe.vae_scale_factor_spatial * p)
        if value % multiple:
            raise CliError(f"{name}: {value} is not a multiple of {multiple} "
                           f"(VAE x{pipe.vae_scale_factor_spatial} times patch {p}; diffusers requires 16)")


def write_video(frames, out: Path, fps: int) -> None:
    """Write float frames in [0, 1] (F, H, W, 3) as mp4 (imageio-ffmpeg) or gif (Pillow)."""
    import numpy as np

    data = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    if out.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in data]
        images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    else:
        import imageio.v2 as imageio

        imageio.mimwrite(out, list(data), fps=fps, codec="libx264", macro_block_size=1, output_params=["-loglevel", "error"])


def generate(args: argparse.Namespace) -> int:
    out = check_output(args.out)
    plan_path = check_plan_path(args.plan, args.level)
    pipe = load_pipeline(args.model)
    default = TINY_SIZE if args.model == "tiny" else FULL_SIZE
    height, width = args.height or default[0], args.width or default[1]
    check_size(pipe, height, width)
    enable_cache(pipe, args)
    import torch

    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    plan = pipe.compile(num_inference_steps=args.steps, guidance_scale=args.guidance, height=height, width=width,
                        num_frames=args.frames)
    if plan_path is not None:
        from edit.graph import render

        print(f"wrote {render(plan, plan_path, level=args.level)} (the plan, level {args.level})")
    start = time.perf_counter()
    frames = pipe(args.prompt, negative_prompt=args.negative_prompt, height=height, width=width,
                  num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  generator=generator, output_type="np", plan=plan).frames[0]
    seconds = time.perf_counter() - start
    write_video(frames, out, args.fps)
    print(f"wrote {out} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}) in {seconds:.2f} s "
          f"({args.steps} steps, {seconds / args.steps * 1000:.1f} ms/step)")
    print("plan (C = computed, S = skipped, R = reused from another generation, ? = decided at run time):")
    print(plan.summary())
    if pipe.cache is not None:
        print(f"cache: {pipe.cache.policy.describe()}; passes {pipe.cache_pipeline}")
        print(pipe.cache.stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return generate(args)
    except CliError as err:
        print(f"edit: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as err:
        print(f"edit: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
