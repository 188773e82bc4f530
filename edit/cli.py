"""The `edit` command line: `edit generate PROMPT ...` writes a video, prints the plan summary and,
with `--cache`, the cache stats; `--plan FILE` draws the plan (graphviz).

Every refusal is one `edit: error: --flag: ...` line and exit status 2, given before the model is
loaded whenever the check needs no weights; a file that could not be written is one such line and
status 1; Ctrl-C is one line and status 130. Files are never written in place (see `edit._output`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from edit.cli_checks import (FULL_SIZE, POLICY_FLAGS, TINY_SIZE, CliError, check_drawing, check_flags, parse_granularity,
                             check_model_and_size, check_outputs, check_request, check_task, pipeline_task,
                             read_images)
from edit.toy.model import default_model


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


def _finite(name: str, low: float, note: str = ""):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"{name}: expected a number >= {low:g}{note}, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise CliError(f"{name}: expected a finite number >= {low:g}{note}, got {text}")
        return value
    return parse


def _seed(text: str) -> int:
    from edit.checks import SEED_RANGE

    try:
        value = int(text)
    except ValueError:
        raise CliError(f"--seed: expected an integer in [0, 2**64 - 1], got {text!r}") from None
    if not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise CliError(f"--seed: expected an integer in [0, 2**64 - 1], got {value}")
    return value


def add_run_arguments(gen: argparse.ArgumentParser) -> None:
    """The model, size, step, guidance and cache flags `generate` and `plan` share."""
    gen.add_argument("--model", default=default_model(),  # read per parse: $EDIT_MODEL may change
                     help="'toy' (the trained toy: moving shapes from captions, 17 frames of 64x64, 30 steps), "
                          "'tiny' (embedded model with seeded random weights: its videos are noise), a folder "
                          "written by save_pretrained, or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
                          "(default: $EDIT_MODEL where set, else toy when its weights are installed, else tiny; "
                          "here: %(default)s)")
    gen.add_argument("--negative-prompt", default=None, metavar="TEXT",
                     help="what to steer away from with classifier-free guidance (default: none)")
    gen.add_argument("--steps", type=_positive_int("--steps"), default=None,
                     help="denoising steps (default: a --plan-file plan's, else 30 on the toy, 20 otherwise)")
    gen.add_argument("--frames", type=_positive_int("--frames"), default=None,
                     help="frames, 4k+1 as the VAE needs (default: a --plan-file plan's, else 17 on the toy, 33 otherwise)")
    gen.add_argument("--height", type=_positive_int("--height"), default=None,
                     help=f"pixels, a multiple of 16 (default: {TINY_SIZE[0]} on the tiny model, 64 on the toy, "
                          f"{FULL_SIZE[0]} otherwise)")
    gen.add_argument("--width", type=_positive_int("--width"), default=None,
                     help=f"pixels, a multiple of 16 (default: {TINY_SIZE[1]} on the tiny model, 64 on the toy, "
                          f"{FULL_SIZE[1]} otherwise)")
    gen.add_argument("--guidance", type=_finite("--guidance", 0, " (<= 1 turns guidance off)"), default=None,
                     help="classifier-free guidance scale; values <= 1 turn guidance off, as in diffusers "
                          "(default: a --plan-file plan's, else 5.0)")
    cache = gen.add_argument_group("step caching")
    cache.add_argument("--cache", default=None, metavar="POLICY",
                       help="a registered cache policy: teacache, fbcache, none, ... (default: no cache)")
    cache.add_argument("--threshold", type=_finite("--threshold", 0, " (0 never skips)"), default=None,
                       help="the policy's rel_l1_thresh (default: the policy's own)")
    cache.add_argument("--granularity", default=None,
                       help="units the policy decides on: stack, per_block or an int k (blocks per unit) (default: stack)")
    cache.add_argument("--wan-variant", default=None,
                       help="TeaCache coefficients: t2v-1.3B, t2v-14B, i2v-480P, i2v-720P (default: t2v-1.3B)")
    cache.add_argument("--pass", dest="passes", default=None, metavar="PIPELINE",
                       help="user passes run after the policy, as pipeline text, e.g. "
                            "\"set_cells(mode=reuse, steps=[1, 2], units=[1])\" (without --cache: policy none) "
                            "(default: none)")


def build_parser() -> argparse.ArgumentParser:
    from edit import __version__

    parser = _Parser(prog="edit", description="EDiT: inspectable, editable step caching for Wan text-to-video.")
    parser.add_argument("--version", action="version", version=f"edit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    gen = sub.add_parser("generate", help="generate a video from a prompt",
                         description="Generate a video from a prompt and print the plan the run executed.")
    gen.add_argument("prompt", help="what the video shows")
    add_run_arguments(gen)
    gen.add_argument("--image", default=None, metavar="IMG",
                     help="image to video: the first frame (any image Pillow reads; resized to the video's size); "
                          "runs an image-to-video pipeline (default: text to video)")
    gen.add_argument("--last-image", default=None, metavar="IMG",
                     help="with --image: the last frame too (first-last-frame: a FLF2V or Wan2.2 I2V model) "
                          "(default: none)")
    gen.add_argument("--seed", type=_seed, default=0, help="seed of the initial noise, 0 to 2**64 - 1 (default: 0)")
    gen.add_argument("--fps", type=_positive_int("--fps"), default=16, help="frames per second of the video (default: 16)")
    gen.add_argument("--out", default="out.mp4", metavar="FILE",
                     help="the video, .mp4 (ffmpeg) or .gif (Pillow); an existing file is replaced only once "
                          "the new one is complete (default: out.mp4)")
    gen.add_argument("--plan", default=None, metavar="FILE",
                     help="also draw the plan: .svg, .png, .pdf or .dot, with its .dot source next to it "
                          "(graphviz; see --level) (default: no drawing)")
    gen.add_argument("--level", default="units",
                     help="detail of --plan and --render: nodes, units or steps (default: units)")
    gen.add_argument("--render-steps", default=None, metavar="STEPS",
                     help="steps the drawings show: A:B (B left out), A:B:STEP, a list 0,5,10, or all "
                          "(default: all at --level steps or up to 6 steps; else 5 spread over the run)")
    gen.add_argument("--plan-file", default=None, metavar="PLAN.json",
                     help="replay a plan saved with `edit plan --save` (checked against this call) (default: compile one)")
    gen.add_argument("--render", default=None, metavar="FILE",
                     help="draw the plan after the run (.svg, .png, .pdf or .dot); with --trace, each run-time "
                          "cell as what it decided (default: no drawing)")
    gen.add_argument("--trace", action="store_true", help="with --render: draw the run's decisions (default: off)")
    gen.add_argument("--compare-uncached", action="store_true",
                     help="also run the same seed without the cache; print both times and the cached "
                          "video's PSNR, SSIM and motion error against it (default: off)")
    gen.add_argument("--stats", default="text", choices=["text", "json"],
                     help="how to print the cache stats: text or json (default: text)")
    gen.add_argument("--parallel", default=None, metavar="LAYOUT",
                     help="run over several processes started by torchrun: cfg=2 (one CFG branch per group of "
                          "ranks), sp=N (each forward's tokens over N ranks), or both, e.g. cfg=2,sp=2 with "
                          "torchrun --nproc-per-node 4 -m edit generate ...; rank 0 prints and writes "
                          "(default: one process)")

    plan = sub.add_parser("plan", help="compile a plan without running it",
                          description="Compile the plan a `generate` call with these flags would run; print its "
                                      "step grid and stats; optionally draw and save it.")
    plan.add_argument("prompt", help="the prompt (no built-in pass reads it: the plan is the same for every prompt)")
    add_run_arguments(plan)
    plan.add_argument("--render", default=None, metavar="FILE",
                      help="draw the plan: .svg, .png, .pdf or .dot (default: no drawing)")
    plan.add_argument("--level", default="units", help="detail of --render: nodes, units or steps (default: units)")
    plan.add_argument("--render-steps", default=None, metavar="STEPS",
                      help="steps the drawings show: A:B (B left out), A:B:STEP, a list 0,5,10, or all "
                           "(default: all at --level steps or up to 6 steps; else 5 spread over the run)")
    plan.add_argument("--save", default=None, metavar="PLAN.json",
                      help="write the plan as versioned JSON, for `edit generate --plan-file` (default: not saved)")
    from edit.cli_search import add_search_parser

    add_search_parser(sub, add_run_arguments)
    comp = sub.add_parser("compare", help="PSNR, SSIM and motion error of one video against another",
                          description="Compare video A with reference B (.mp4 or .gif, same frames and size).")
    comp.add_argument("a", metavar="A", help="the video to judge, e.g. a cached run")
    comp.add_argument("b", metavar="B", help="the reference, e.g. the uncached run with the same seed")
    comp.add_argument("--json", action="store_true",
                      help="print one JSON line, an infinite PSNR as \"inf\" (default: text)")
    return parser


# -- checks that need no weights ---------------------------------------------------------------


# -- the run -----------------------------------------------------------------------------------

def load_pipeline(model: str, folder: Path | None, images: tuple | None = None):
    """The pipeline of `model`; with `images` (first, last or None) an image-to-video one."""
    import torch

    import edit

    if model == "tiny":
        if images:  # the tiny Wan2.1 I2V layout; with a last frame, its FLF2V layout
            return edit.tiny_i2v_pipeline(seed=0, kind="wan2.1" if images[1] is None else "flf2v")
        return edit.tiny_pipeline(seed=0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device = "cuda" if torch.cuda.is_available() else None
    cls = edit.EditWanImageToVideoPipeline if images or pipeline_task(folder) == "i2v" else edit.EditWanPipeline
    try:
        return cls.from_pretrained(str(folder or model), dtype=dtype, device=device)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"--model: cannot load {model!r}: {first}") from None


def enable_cache(pipe, args: argparse.Namespace, policy=None) -> None:
    """Enable the cache the flags ask for; `policy` (from `saved_policy`) overrides them."""
    if policy is None:
        policy = args.cache or ("none" if args.passes else None)
    if policy is None:
        return
    granularity = parse_granularity(args.granularity)
    kwargs = {}
    if isinstance(policy, str):  # the plan's policy has its arguments already (checked against the flags)
        if args.threshold is not None:
            kwargs["rel_l1_thresh"] = args.threshold
        if args.wan_variant is not None:
            kwargs["wan_variant"] = args.wan_variant
    try:
        pipe.enable_cache(policy, num_inference_steps=args.steps, granularity=granularity,
                          passes=getattr(args, "passes_parsed", ()), **kwargs)
    except (TypeError, ValueError) as err:
        raise CliError(policy_error(getattr(policy, "name", policy), err)) from None


def saved_policy(args: argparse.Namespace, plan):
    """The policy a `--plan-file` plan with cells decides them with, with all its arguments (the
    library reads it from the plan's pipeline text; `none` when the text applies none), or None
    without such a plan. A policy flag that says otherwise is refused: the plan decides."""
    from edit.graph import Cell
    from edit.passes import make_policy, plan_policy

    if plan is None:
        return None
    for flag, given in (("--pass", args.passes), ("--granularity", args.granularity)):
        if given is not None:  # the plan's passes ran when it was compiled: nothing here would apply them
            raise CliError(f"{flag}: a --plan-file plan is already compiled (its passes: {plan.pipeline or '(none)'}); "
                           f"drop {flag} or compile another plan with it")
    if not plan.find(Cell):
        if args.cache is not None:
            raise CliError("--cache: the --plan-file plan has no cache cells; drop --cache or compile another plan")
        return None
    try:
        policy = plan_policy(plan) or make_policy("none")
    except (TypeError, ValueError) as err:
        raise CliError(f"--plan-file: {str(err).removeprefix('text: ')}") from None
    params = policy.params()
    for flag, given, planned in (("--cache", args.cache, policy.name),
                                 ("--threshold", args.threshold, params.get("rel_l1_thresh")),
                                 ("--wan-variant", args.wan_variant, params.get("wan_variant"))):
        if given is not None and given != planned:
            raise CliError(f"{flag}: the plan decides with {policy.to_text()}; drop {flag} or compile another plan")
    return policy


def load_plan_file(value: str | None):
    if value is None:
        return None
    from edit.graph import Plan
    from edit.graph.planfile import PlanFileError

    try:
        return Plan.load(value)
    except PlanFileError as err:
        raise CliError(f"--plan-file: {err}") from None


def policy_error(policy: str, err: Exception) -> str:
    """The policy's message, led by the flag that set the argument it names."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    name, sep, rest = first.partition(": ")
    if sep and name in POLICY_FLAGS:
        return f"{POLICY_FLAGS[name]}: {rest}"
    if sep and name == "policy":
        argument = rest.partition("has no argument '")[2].partition("'")[0]
        return f"{POLICY_FLAGS.get(argument, '--cache')}: {rest}"  # the flag that gave the argument
    return f"--cache {policy}: {first}"


#: Ranks other than 0 of a `--parallel` run print and write nothing (rank 0 speaks for the run).
_QUIET = False


def check_parallel(args: argparse.Namespace) -> tuple[int, int] | None:
    """`--parallel`'s (cfg, sequence), checked against torchrun's variables before the model loads."""
    global _QUIET
    if args.parallel is None:
        return None
    from edit.runtime.distributed import TORCHRUN_ENV, parse_layout

    try:
        cfg, sequence = parse_layout(args.parallel)
    except ValueError as err:
        raise CliError(f"--parallel: {err}") from None
    world = cfg * sequence
    if world > 1:
        missing = [v for v in TORCHRUN_ENV if v not in os.environ]
        if missing:
            raise CliError(f"--parallel: {args.parallel} needs {world} processes; start them with torchrun "
                           f"--nproc-per-node {world} -m edit generate ... (missing {', '.join(missing)})")
        if os.environ["WORLD_SIZE"] != str(world):
            raise CliError(f"--parallel: {args.parallel} needs {world} processes, torchrun started "
                           f"{os.environ['WORLD_SIZE']}")
        _QUIET = os.environ["RANK"] != "0"
    return cfg, sequence


def say(text: str = "") -> None:
    """Print to stdout; once stdout is closed (`edit ... | head -1`), carry on silently."""
    if _QUIET:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush is quiet too
        os.close(devnull)


def generate(args: argparse.Namespace) -> int:
    from edit._output import write_plan, write_video

    saved_plan = load_plan_file(args.plan_file)
    saved = saved_policy(args, saved_plan)  # a saved plan with cells runs under the policy that made it
    check_flags(args, planned=saved is not None)
    layout = check_parallel(args)
    out, plan_path = check_outputs(args)
    render_path = check_drawing(args, "--render", args.render)
    images = read_images(args)
    folder, height, width, known = check_model_and_size(args, saved_plan)
    check_task(args, folder, images)
    drawn_steps = choose_drawn_steps(args, render_path or plan_path)

    start = time.perf_counter()
    pipe = load_pipeline(args.model, folder, images)
    if known is None:
        from edit.limits import ModelLimits

        weights = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
        check_request(args, ModelLimits.from_pipeline(pipe), weights, height, width)
    enable_cache(pipe, args, saved)
    if layout is not None and layout != (1, 1):
        try:
            pipe.enable_parallelism(*layout)
        except (TypeError, ValueError) as err:
            raise CliError(f"--parallel: {str(err).splitlines()[0].removeprefix('parallel: ')}") from None
    loaded = time.perf_counter() - start
    say(f"loaded {args.model} in {loaded:.2f} s")

    import numpy as np
    import torch

    pipe.set_progress_bar_config(disable=True)
    plan = saved_plan or compile_plan_for(pipe, args, height=height, width=width, num_frames=args.frames)
    callback = announce_long_run(pipe, plan)
    if plan_path is not None and not _QUIET:
        drawn, note = write_plan(plan, plan_path, args.level, steps=drawn_steps[0])
        say(f"wrote {drawn} (the plan, level {args.level})")
        notes(note, drawn_steps[1])
    start = time.perf_counter()
    try:
        frames = pipe(*image_args(images), args.prompt, negative_prompt=args.negative_prompt, height=height,
                      width=width, num_frames=args.frames, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=torch.Generator("cpu").manual_seed(args.seed),
                      output_type="np", plan=plan, callback_on_step_end=callback, **last_image_args(images)).frames[0]
    except ValueError as err:
        if saved_plan is None or not str(err).startswith("plan"):
            raise
        raise CliError(f"--plan-file: {str(err).splitlines()[0]}") from None
    seconds = time.perf_counter() - start
    reference = run_uncached(pipe, args, height, width, images) if args.compare_uncached else None
    if not np.isfinite(frames).all():  # never hand over a silently wrong video
        raise CliError("--guidance: the run produced non-finite values (NaN/inf); nothing was written")
    data = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    if _QUIET:  # every rank holds the same video: rank 0 writes it
        return 0
    write_video(data, out, args.fps)
    say(f"generated {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} in {seconds:.2f} s "
        f"({args.steps} steps, {seconds / args.steps * 1000:.1f} ms/step; loading took {loaded:.2f} s more)")
    say(f"wrote {out}")
    report_run(pipe, plan, args, render_path, drawn_steps)
    if reference is not None:
        report_comparison(frames, seconds, *reference)
    return 0


def run_uncached(pipe, args: argparse.Namespace, height: int, width: int, images: tuple | None = None):
    """The same call, seed, images and weights with no cache (a second pipeline of the same class
    over the same modules): (frames, seconds)."""
    import torch

    plain = type(pipe)(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    frames = plain(*image_args(images), args.prompt, negative_prompt=args.negative_prompt, height=height,
                   width=width, num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=torch.Generator("cpu").manual_seed(args.seed), output_type="np",
                   **last_image_args(images)).frames[0]
    return frames, time.perf_counter() - start


def image_args(images: tuple | None) -> tuple:
    """An image-to-video call's leading `image` argument (none for text to video)."""
    return (images[0],) if images else ()


def last_image_args(images: tuple | None) -> dict:
    return {"last_image": images[1]} if images and images[1] is not None else {}


def report_comparison(frames, seconds: float, reference, reference_seconds: float) -> None:
    import numpy as np

    from edit.cli_compare import _number
    from edit.metrics import compare

    result = compare(np.clip(frames, 0, 1), np.clip(reference, 0, 1))
    say(f"uncached {reference_seconds:.2f} s, cached {seconds:.2f} s ({reference_seconds / seconds:.2f}x); "
        f"against the uncached video: psnr {_number(result['psnr'], 2)} dB, ssim {result['ssim']:.4f}, "
        f"temporal {_number(result['temporal'], 4)}")


LONG_RUN_SECONDS = 10.0  # a run estimated longer says so first, and shows its progress bar


def announce_long_run(pipe, plan):
    """For a run estimated to be long: say its tokens per forward and the time it will take, show
    the progress bar from the first step, and say when decoding starts. Returns the step callback
    that says it (None for a short run, which prints nothing more)."""
    from edit.estimate import estimate_run

    estimate = estimate_run(pipe, plan)
    if estimate.seconds < LONG_RUN_SECONDS:
        return None
    say(f"a long run: {estimate.describe()}")
    pipe.set_progress_bar_config(disable=False, file=sys.stderr)
    last = plan.spec.num_steps - 1
    frames = 1 + (plan.spec.latent_shape[2] - 1) * pipe.vae_scale_factor_temporal
    pixels = f"{plan.spec.latent_shape[4] * pipe.vae_scale_factor_spatial}x{plan.spec.latent_shape[3] * pipe.vae_scale_factor_spatial}"

    def on_step_end(pipe_, step, timestep, outputs):
        if step == last:  # through tqdm, so the line does not land inside the bar
            from tqdm.auto import tqdm

            try:
                tqdm.write(f"decoding {frames} frames of {pixels} (about {estimate.decode_seconds:.0f} s)",
                           file=sys.stdout)
            except BrokenPipeError:
                say("")  # quiets the closed stdout as `say` does
        return outputs
    return on_step_end


def compile_plan_for(pipe, args: argparse.Namespace, **size) -> object:
    """`pipe.compile` for the flags; an error raised by a `--pass` pass is reported under that flag."""
    from edit.passes import pass_text

    try:
        return pipe.compile(num_inference_steps=args.steps, guidance_scale=args.guidance, **size)
    except (TypeError, ValueError) as err:
        user = [pass_text(p) for p in getattr(args, "passes_parsed", ())]
        if user and not str(err).startswith("plan"):
            raise CliError(f"--pass: {str(err).splitlines()[0]}") from None
        raise


def choose_drawn_steps(args: argparse.Namespace, drawing: Path | None) -> tuple[list[int] | None, str | None]:
    """The steps the drawings show and the note saying which the default left out; checked now,
    before the model loads (the steps are known: a flag, a --plan-file plan's, or the default)."""
    from edit import cli_steps

    if drawing is None:
        if args.render_steps is not None:
            raise CliError("--render-steps: needs a drawing to choose steps of (--render FILE"
                           + (" or --plan FILE)" if args.command == "generate" else ")"))
        return None, None
    return cli_steps.choose(args.render_steps, args.steps, args.level)


def notes(*lines: str | None) -> None:
    for line in lines:
        if line:
            print(f"edit: note: {line}", file=sys.stderr)


def report_run(pipe, plan, args: argparse.Namespace, render_path: Path | None,
               drawn_steps: tuple = (None, None)) -> None:
    """The plan that ran, the cache's stats, and the drawing with the run's decisions."""
    from edit._output import write_plan

    if pipe.cache is not None:  # what ran: the trace fills in the cells decided at run time
        say("run (C = computed, S = skipped, M = skipped but missed the store: recomputed, R = reused from "
            "another generation):")
        say(plan.summary(trace=pipe.cache.stats.cell_states()))
    else:
        say("plan (C = computed, S = skipped, R = reused from another generation, ? = decided at run time):")
        say(plan.summary())
    if args.stats == "json" and pipe.cache is None:
        say(json.dumps({"cache": None, "summary": plan.summary()}))  # one JSON line, whatever the flags
    if pipe.cache is not None:
        if args.stats == "json":
            say(json.dumps(pipe.cache.stats.as_dict()))
        else:
            policy = pipe.cache.run_policy or pipe.cache.policy  # a saved plan's own, when one ran
            say(f"cache: {policy.describe()}; passes {plan.pipeline or pipe.cache_pipeline}")
            say(str(pipe.cache.stats))
            for rank in pipe.cache.stats.ranks or ():  # a --parallel run: what each rank did
                say(f"  rank {rank['rank']} (CFG group {rank['group']}, shard {rank['shard']}): "
                    f"{', '.join(rank['branches'])}; computed {rank['computed']}, skipped {rank['skipped']}; "
                    f"sent {rank['bytes_moved']:,} B outside attention")
    if render_path is not None:
        trace = pipe.cache.stats if args.trace and pipe.cache is not None else None
        drawn, note = write_plan(plan, render_path, args.level, flag="--render", trace=trace, steps=drawn_steps[0])
        say(f"wrote {drawn} (the plan, level {args.level}{', with the run' + chr(39) + 's decisions' if trace else ''})")
        notes(note, drawn_steps[1])


def plan_command(args: argparse.Namespace) -> int:
    from edit._output import OutputError, write_plan
    from edit.cli_checks import check_save

    check_flags(args)
    render_path = check_drawing(args, "--render", args.render)
    save_path = check_save(args.save)
    folder, height, width, _ = check_model_and_size(args)
    drawn_steps = choose_drawn_steps(args, render_path)
    pipe = load_pipeline(args.model, folder)  # an image-to-video folder compiles its own (conditioned) plan
    enable_cache(pipe, args)
    start = time.perf_counter()
    plan = compile_plan_for(pipe, args, prompt=args.prompt, height=height, width=width, num_frames=args.frames)
    say(f"compiled {len(plan)} nodes in {time.perf_counter() - start:.2f} s; passes: {plan.pipeline or '(none)'}")
    say("plan (C = computed, S = skipped, R = reused from another generation, ? = decided at run time):")
    say(plan.summary())
    say(json.dumps(plan.stats(getattr(pipe.cache, "store", None)), indent=1))
    if render_path is not None:
        drawn, note = write_plan(plan, render_path, args.level, flag="--render", steps=drawn_steps[0])
        say(f"wrote {drawn} (the plan, level {args.level})")
        notes(note, drawn_steps[1])
    if save_path is not None:
        try:
            plan.save(save_path)
        except OSError as err:
            raise OutputError("--save", f"cannot write {str(save_path)!r}: {err.strerror or err}") from None
        say(f"wrote {save_path} (replay it with edit generate --plan-file)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from edit._output import OutputError

    try:
        parser = build_parser()
        if not (sys.argv[1:] if argv is None else argv):  # bare `edit`: the usage, not one line
            parser.print_help(sys.stderr)
            return 2
        args = parser.parse_args(argv)
        if args.command == "compare":
            from edit.cli_compare import compare_command
            return compare_command(args)
        if args.command == "search":
            from edit.cli_search import search_command
            return search_command(args)
        return plan_command(args) if args.command == "plan" else generate(args)
    except CliError as err:
        print(f"edit: error: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"edit: error: {err.flag}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except (ValueError, TypeError) as err:
        print(f"edit: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2


def _late_interrupt(signum, frame) -> None:
    print("edit: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def run() -> None:
    """The process entry point (`edit`, `python -m edit`): `main`, then an exit that a Ctrl-C cannot
    turn into a traceback. Everything the command writes is complete and flushed when `main`
    returns; what is left is the interpreter's teardown (torch's finalisers, threading's shutdown),
    where a KeyboardInterrupt would print "Exception ignored in ..." and still exit 0. So after
    `main` a Ctrl-C exits 130 with the one line, and the teardown is skipped."""
    try:
        code = main()
        signal.signal(signal.SIGINT, _late_interrupt)
    except KeyboardInterrupt:  # between main's return and the handler
        _late_interrupt(signal.SIGINT, None)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
