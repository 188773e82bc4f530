"""The command line's checks of its flags, made before the model is loaded whenever they need no
weights: one `CliError` line naming the flag for each refusal."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".gif")
TINY_SIZE = (64, 96)
TOY_SIZE = (64, 64)  # what the trained toy learned: 17 frames of 64x64
FULL_SIZE = (480, 832)
#: Policy keyword -> the flag that sets it, so a policy's refusal names what the user typed.
POLICY_FLAGS = {"rel_l1_thresh": "--threshold", "wan_variant": "--wan-variant", "granularity": "--granularity"}
SIZE_FLAGS = {"num_frames": "--frames", "height": "--height", "width": "--width"}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def check_flags(args: argparse.Namespace, planned: bool = False) -> None:
    """Flags that contradict each other. `planned`: a saved plan gives the policy (then
    `--threshold`/`--wan-variant` need no `--cache`; `saved_policy` checks them against it)."""
    if args.cache is None and not planned:
        for flag in ("threshold", "wan_variant") + (() if args.passes else ("granularity",)):
            if getattr(args, flag) is not None:
                raise CliError(f"--{flag.replace('_', '-')}: needs --cache POLICY")
    if getattr(args, "compare_uncached", False) and args.cache is None and args.passes is None and not planned:
        raise CliError("--compare-uncached: needs --cache POLICY, --pass or a --plan-file plan with cache cells "
                       "(without them the run is the uncached one)")
    if getattr(args, "trace", False) and args.render is None:
        raise CliError("--trace: needs --render FILE (the drawing the decisions go into)")
    if args.passes is not None:
        from edit.passes import Pipeline

        try:
            args.passes_parsed = Pipeline.parse(args.passes).passes
        except (TypeError, ValueError) as err:
            raise CliError(f"--pass: {str(err).removeprefix('text: ')}") from None


def check_drawing(args: argparse.Namespace, flag: str, value: str | None) -> Path | None:
    """A drawing target: a known suffix, and a place its file and .dot source can be written."""
    from edit._output import OutputError, check_target
    from edit.graph import LEVELS
    from edit.graph.draw import FORMATS

    if args.level not in LEVELS:
        raise CliError(f"--level: expected one of {', '.join(LEVELS)}, got {args.level!r}")
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lstrip(".").lower() not in FORMATS:
        raise CliError(f"{flag}: expected a file ending in {', '.join('.' + f for f in FORMATS)}, got {value!r}")
    try:
        check_target(path, flag)
        if path.suffix.lower() != ".dot":
            check_target(path.with_suffix(".dot"), flag)
    except OutputError as err:
        raise CliError(f"{err.flag}: {err}") from None
    return path


def check_outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    from edit._output import OutputError, check_target
    from edit.graph import LEVELS
    from edit.graph.draw import FORMATS

    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise CliError(f"--out: expected a file ending in {' or '.join(VIDEO_SUFFIXES)}, got {args.out!r}")
    if out.suffix.lower() == ".gif" and args.fps > 100:
        raise CliError(f"--fps: a GIF stores frame times in 1/100 s, so at most 100 fps; got {args.fps}")
    if args.level not in LEVELS:
        raise CliError(f"--level: expected one of {', '.join(LEVELS)}, got {args.level!r}")
    plan = None if args.plan is None else Path(args.plan)
    if plan is not None and plan.suffix.lstrip(".").lower() not in FORMATS:
        raise CliError(f"--plan: expected a file ending in {', '.join('.' + f for f in FORMATS)}, got {args.plan!r}")
    try:
        check_target(out, "--out")
        if plan is not None:
            check_target(plan, "--plan")
            if plan.suffix.lower() != ".dot":
                check_target(plan.with_suffix(".dot"), "--plan")
    except OutputError as err:
        raise CliError(f"{err.flag}: {err}") from None
    return out, plan


def local_folder(model: str) -> Path | None:
    if model == "toy":  # the trained toy, shipped in the package
        from edit.toy.model import WEIGHTS

        if not (WEIGHTS / "model_index.json").is_file():
            raise CliError(f"--model: the toy weights are not in {str(WEIGHTS)!r}; train them with "
                           "`python -m edit.toy.train` or use --model tiny")
        return WEIGHTS
    looks_local = model.startswith((".", "/", "~")) or (os.sep in model and Path(model).expanduser().exists())
    if not looks_local:
        return None
    folder = Path(model).expanduser()
    if not (folder / "model_index.json").is_file():
        raise CliError(f"--model: {model!r} is not a pipeline folder (no model_index.json); "
                       "expected 'tiny', a folder written by save_pretrained, or a hub id")
    return folder


def limits_without_weights(model: str, folder: Path | None):
    """The model's limits from its configs alone, or None when they need the download (a hub id)."""
    from edit.limits import ModelLimits

    if model == "tiny":
        from edit.tiny import TINY_TRANSFORMER, TINY_VAE

        return ModelLimits.from_configs(TINY_TRANSFORMER, TINY_VAE, {"num_train_timesteps": 1000}), 0
    if folder is None:
        return None
    try:
        configs = [json.loads((folder / part / name).read_text()) for part, name in
                   (("transformer", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"))]
    except (OSError, ValueError):
        return None  # let the loader say what is wrong with the folder
    weights = sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file())
    return ModelLimits.from_configs(*configs), weights


def check_request(args: argparse.Namespace, limits, weight_bytes: int, height: int, width: int) -> None:
    """Sizes, frames and steps the model can take, and a memory need the machine can hold."""
    from edit.limits import gib, machine_bytes

    for flag, value, patch in (("--height", height, limits.patch_size[1]), ("--width", width, limits.patch_size[2])):
        multiple = max(16, limits.vae_spatial * patch)
        if value % multiple:
            raise CliError(f"{flag}: {value} is not a multiple of {multiple} "
                           f"(VAE x{limits.vae_spatial} times patch {patch}; diffusers requires 16)")
    t = limits.vae_temporal
    if args.frames % t != 1 and t > 1:
        low = max(1, args.frames // t * t + 1 - (t if args.frames % t == 0 else 0))
        raise CliError(f"--frames: {args.frames} is not {t}k+1 (the VAE encodes 1 + {t}k frames); "
                       f"try {low} or {low + t}")
    if limits.num_train_timesteps and args.steps > limits.num_train_timesteps:
        raise CliError(f"--steps: {args.steps} is more than the scheduler's {limits.num_train_timesteps} "
                       "training timesteps (steps past that repeat timesteps)")
    try:
        limits.check_size(args.frames, height, width, names=SIZE_FLAGS)
    except ValueError as err:
        raise CliError(str(err)) from None
    need, have = limits.estimate_bytes(args.frames, height, width, args.steps, weight_bytes), machine_bytes()
    if need > have:
        raise CliError(f"--frames/--height/--width: this video needs at least about {gib(need)} of memory, "
                       f"more than this machine's {gib(have)}; ask for fewer frames or fewer pixels")


#: What --steps, --frames and --guidance are when neither the flag nor a --plan-file says.
DEFAULTS = {"steps": 20, "frames": 33, "guidance": 5.0}
TOY_DEFAULTS = {"steps": 30, "frames": 17}


def from_plan(args: argparse.Namespace, plan, limits) -> None:
    """Steps, guidance and (with the model's VAE factors known before loading) the size a --plan-file
    plan was compiled for, for each flag not given; a flag that disagrees is refused now, before the
    model loads, naming it."""
    spec = plan.spec
    shape = plan.fingerprint.get("latent_shape") if isinstance(getattr(plan, "fingerprint", None), dict) else None
    planned = {"steps": spec.num_steps if spec else None, "guidance": spec.guidance_scale if spec else None}
    if limits is not None and shape is not None and len(shape) == 5:
        planned.update(frames=(shape[2] - 1) * limits.vae_temporal + 1, height=shape[3] * limits.vae_spatial,
                       width=shape[4] * limits.vae_spatial)
    for flag, value in planned.items():
        if value is None:
            continue
        given = getattr(args, flag)
        if given is None:
            setattr(args, flag, value)
        elif given != value:
            raise CliError(f"--{flag}: the --plan-file plan was compiled for {value!r}, this call asks for "
                           f"{given!r}; drop --{flag} (the plan's is used) or compile another plan")


def check_model_and_size(args: argparse.Namespace, plan=None):
    """The model folder (None for tiny or a hub id), the size, and the model's limits when its configs
    can be read without the weights (checked against the request here, before loading). A
    --plan-file `plan` gives the steps, guidance and size its flags leave out."""
    folder = local_folder(args.model) if args.model != "tiny" else None
    known = limits_without_weights(args.model, folder)
    if plan is not None:
        from_plan(args, plan, None if known is None else known[0])
    for flag, value in {**DEFAULTS, **(TOY_DEFAULTS if args.model == "toy" else {})}.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    default = {"tiny": TINY_SIZE, "toy": TOY_SIZE}.get(args.model, FULL_SIZE)
    height, width = args.height or default[0], args.width or default[1]
    if known is not None:
        check_request(args, *known, height, width)
    return folder, height, width, known


def read_images(args: argparse.Namespace) -> tuple | None:
    """`--image` and `--last-image` read (RGB), before the model loads: (first, last or None), or
    None for text to video."""
    if args.last_image is not None and args.image is None:
        raise CliError("--last-image: needs --image IMG (the first frame)")
    if args.image is None:
        return None
    return _read_image("--image", args.image), (None if args.last_image is None
                                                else _read_image("--last-image", args.last_image))


def _read_image(flag: str, value: str):
    from PIL import Image

    try:
        with Image.open(Path(value).expanduser()) as image:
            return image.convert("RGB")  # reads every pixel now: a truncated file fails here, not mid-run
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).splitlines() or [""])[0]
        raise CliError(f"{flag}: cannot read {value!r} as an image: {reason or type(err).__name__}") from None


def pipeline_task(folder: Path | None) -> str | None:
    """What a pipeline folder's model_index.json says it runs: "i2v" (an image-to-video pipeline),
    "ti2v" (Wan2.2 TI2V: a text-to-video pipeline with expand_timesteps, which takes an image too),
    "t2v", or None when there is no folder or it cannot be read."""
    if folder is None:
        return None
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return None
    name = str(index.get("_class_name", ""))
    if "ImageToVideo" in name:
        return "i2v"
    return "ti2v" if index.get("expand_timesteps") else "t2v"


def check_task(args: argparse.Namespace, folder: Path | None, images: tuple | None) -> None:
    """The model can run the task the flags ask for: image to video with --image, else text to video."""
    if images and args.model == "toy":
        raise CliError("--image: the toy model is text to video only; use --model tiny or an image-to-video folder")
    task = pipeline_task(folder) if args.model != "toy" else "t2v"
    if images and task == "t2v":
        raise CliError(f"--image: {args.model!r} is a text-to-video pipeline; image to video needs a "
                       "WanImageToVideoPipeline folder or a TI2V one (expand_timesteps)")
    if not images and task == "i2v":
        raise CliError(f"--image: {args.model!r} is an image-to-video pipeline; give --image IMG (the first frame)")


def check_save(value: str | None) -> Path | None:
    """`--save PLAN.json`: a .json path that can be written (None when not asked)."""
    from edit._output import OutputError, check_target

    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() != ".json":
        raise CliError(f"--save: expected a file ending in .json, got {value!r}")
    try:
        check_target(path, "--save")
    except OutputError as err:
        raise CliError(f"{err.flag}: {err}") from None
    return path


def parse_granularity(value: str | None) -> str | int:
    """`--granularity`'s text: stack (the default), per_block, or an int."""
    granularity = value or "stack"
    return int(granularity) if granularity.lstrip("-").isdigit() else granularity
