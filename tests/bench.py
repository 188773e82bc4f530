"""Step-caching benchmark: no cache vs TeaCache at three thresholds vs First-Block-Cache at two.

For every configuration: denoising time (median of --repeats runs, configurations interleaved
round-robin in one process), speedup over no cache (median of the per-round ratios), % of (step,
branch) forwards skipped, % of block evaluations skipped, peak memory (CUDA peak allocated on a GPU,
peak RSS on a CPU), the Amdahl bound that skip ratio allows given the measured fixed (non-block)
fraction of one forward, speedup / bound, and the PSNR of the decoded video against the uncached
one. Writes JSON and a markdown table.

    python tests/bench.py                        # embedded mid config on this CPU (defaults below)
    python tests/bench.py --config tiny --steps 10 --repeats 1   # seconds, a smoke run
    python tests/bench.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers --height 480 --width 832 \\
        --frames 33 --steps 30                   # the real checkpoint on a GPU (bf16)

Thresholds. TeaCache runs at the published thresholds 0.1 / 0.2 / 0.3 (the seed table in
shared/REFERENCE.md). With `--model` (trained weights) it uses the published `t2v-1.3B` coefficients
(`--calibrate` fits new ones instead); the embedded models have seeded random weights, far outside the
range the published polynomials were fitted on (their `e0` moves 0.5-0.9 relative L1 per step), so
for them the coefficients are fitted first with `edit.cache.calibrate_teacache` on two other prompts
and seeds at the benchmark's size and step count. FBCache runs at 0.05 / 0.1 with trained weights and
0.15 / 0.2 on the embedded models (the first block's residual of random weights moves ~0.1-0.2 per
step). Override with --teacache / --fbcache / --coefficients.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from edit import diffusers_face as face
from edit import EditWanPipeline, tiny_components
from edit.cache import calibrate_teacache
from edit.graph import Cell, Unit

#: Embedded model presets: transformer overrides and the default call size of each.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(model={}, height=64, width=96, frames=33, steps=30),
    "mid": dict(model=dict(num_layers=8, num_attention_heads=8, attention_head_dim=32, ffn_dim=1024, text_dim=64),
                height=128, width=128, frames=33, steps=30),
}
#: Default thresholds: (teacache, fbcache) for real weights and for the embedded random-weight models.
THRESHOLDS = {"real": ((0.1, 0.2, 0.3), (0.05, 0.1)), "embedded": ((0.1, 0.2, 0.3), (0.15, 0.2))}
#: Calibration runs use other prompts and seeds than the measured runs.
CALIBRATION_PROMPTS = ["a lighthouse on a cliff in a storm, waves crashing", "a cat playing a grand piano, close-up"]
PROMPT = "a red fox running through snow, cinematic, golden hour"


def parse_floats(text: str, name: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"bench.py: --{name}: expected comma-separated numbers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise SystemExit(f"bench.py: --{name}: expected {count} values, got {len(values)}")
    if name != "coefficients" and any(v < 0 for v in values):
        raise SystemExit(f"bench.py: --{name}: thresholds must be >= 0, got {text!r}")
    return values


def load_components(args) -> tuple[dict[str, Any], str]:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.model is None:
        return tiny_components(args.seed, torch_dtype=dtype, **CONFIGS[args.config]["model"]), f"embedded {args.config}"
    from diffusers import AutoencoderKLWan
    vae = AutoencoderKLWan.from_pretrained(args.model, subfolder="vae", dtype=torch.float32)
    pipe = EditWanPipeline.from_pretrained(args.model, vae=vae, dtype=dtype, device=args.device)
    return dict(pipe.components), args.model


class PeakMemory:
    """Peak memory of one region: CUDA peak allocated, or the process's peak RSS (VmHWM, reset
    through /proc/self/clear_refs so each run gets its own peak)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                pass  # not Linux, or not allowed: VmHWM then is the process-lifetime peak
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        else:
            self.bytes = _vm_hwm()

    @property
    def kind(self) -> str:
        return "CUDA peak allocated" if self.cuda else "peak RSS"


def _vm_hwm() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_split(pipe: EditWanPipeline, call: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median ms of the forward's prefix (embed), its blocks and its head, on this run's shapes."""
    device, adapter = pipe._execution_device, pipe.adapter
    num_frames, height, width = face.fit_video_size(pipe, call["num_frames"], call["height"], call["width"])
    shape = face.latent_shape(pipe, 1, num_frames, height, width)
    with torch.no_grad():
        text, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device=device)
        text = text.to(pipe.transformer.dtype)
        latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0)).to(device, pipe.transformer.dtype)
        timestep = pipe._timesteps(call["num_inference_steps"], device)[:1].expand(1)
        times: dict[str, list[float]] = {"embed": [], "blocks": [], "head": []}
        for i in range(repeats + 1):
            marks = [time.perf_counter()]
            ctx = adapter.embed(latents, timestep, text)
            _sync(device)
            marks.append(time.perf_counter())
            hidden = adapter.run_blocks(0, adapter.num_blocks, ctx.hidden, ctx)
            _sync(device)
            marks.append(time.perf_counter())
            adapter.head(hidden, ctx)
            _sync(device)
            marks.append(time.perf_counter())
            if i:  # the first round warms up
                for key, a, b in zip(times, marks, marks[1:]):
                    times[key].append((b - a) * 1000)
    split = {k: statistics.median(v) for k, v in times.items()}
    split["forward"] = sum(split.values())
    split["fixed_fraction"] = (split["embed"] + split["head"]) / split["forward"]
    return split


def block_skip_fraction(pipe: EditWanPipeline, call: dict[str, Any]) -> float:
    """Fraction of all block evaluations (every forward x every block) that were reused, from the
    trace and the block count of each unit (FBCache's probe block 0 always runs)."""
    stats = pipe.cache.stats
    plan = pipe._program_cache[1].graph
    sizes = {(n.branch, n.unit): n.blocks[1] - n.blocks[0] for n in plan.nx.nodes if isinstance(n, (Unit, Cell))}
    forwards = len(call["branches"]) * call["num_inference_steps"]
    skipped = sum(trace.count("S") * sizes[key] for key, trace in stats.trace.items())
    return skipped / (forwards * pipe.adapter.num_blocks)


def psnr(video: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(video, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def amdahl_bound(fixed_fraction: float, skipped: float) -> float:
    """Speedup when `skipped` of the skippable (block) work disappears and the rest stays."""
    return 1.0 / (fixed_fraction + (1 - fixed_fraction) * (1 - skipped))


def make_runs(args, components: dict[str, Any], call: dict[str, Any]) -> tuple[list[dict[str, Any]], dict | None]:
    """One pipeline per configuration (sharing the modules), and the TeaCache calibration if one ran."""
    tea, fb = THRESHOLDS["real" if args.model else "embedded"]
    tea = parse_floats(args.teacache, "teacache", 3) if args.teacache else tea
    fb = parse_floats(args.fbcache, "fbcache", 2) if args.fbcache else fb
    calibration = None
    if args.coefficients:
        tea_kw = dict(coefficients=parse_floats(args.coefficients, "coefficients"))
    elif args.model and not args.calibrate:
        tea_kw = dict(wan_variant=args.wan_variant)
    else:
        pipe = EditWanPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        sizes = {k: call[k] for k in ("num_frames", "height", "width", "guidance_scale")}
        start = time.perf_counter()
        fit = calibrate_teacache(pipe, CALIBRATION_PROMPTS, num_inference_steps=call["num_inference_steps"],
                                 seed=args.seed + 1000, **sizes)
        tea_kw = fit.policy_kwargs()
        calibration = dict(coefficients=list(fit.coefficients), samples=len(fit.signal_changes),
                           mean_abs_error=round(fit.mean_abs_error, 5), prompts=CALIBRATION_PROMPTS,
                           seconds=round(time.perf_counter() - start, 2))
    runs = [dict(name="No cache", policy=None, kwargs={})]
    runs += [dict(name=f"TeaCache {t:g}", policy="teacache", kwargs=dict(rel_l1_thresh=t, **tea_kw)) for t in tea]
    runs += [dict(name=f"FBCache {t:g}", policy="fbcache", kwargs=dict(rel_l1_thresh=t)) for t in fb]
    for run in runs:
        pipe = EditWanPipeline(**components)  # one pipeline per configuration, sharing the modules
        pipe.set_progress_bar_config(disable=True)
        if run["policy"]:
            pipe.enable_cache(run["policy"], num_inference_steps=args.steps, granularity=args.granularity,
                              **run["kwargs"])
        run["pipe"] = pipe
    return runs, calibration


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"{meta['model']} on {meta['device_name']}, {meta['dtype']}, {meta['height']}x{meta['width']}, "
        f"{meta['frames']} frames, {meta['steps']} steps, CFG {meta['guidance_scale']}, granularity "
        f"{meta['granularity']}; median of {meta['repeats']} interleaved runs. Fixed (non-block) fraction of one "
        f"forward: {meta['fixed_fraction']:.1%} ({meta['forward_ms']['forward']:.1f} ms per forward).",
    ]
    fit = meta.get("teacache_calibration")
    if fit:
        poly = ", ".join(f"{c:.4g}" for c in fit["coefficients"])
        lines[0] += (f" TeaCache coefficients calibrated on {fit['samples']} samples of other prompts: [{poly}] "
                     f"(mean |error| {fit['mean_abs_error']:.4f}).")
    lines += [
        "",
        f"| Configuration | Time | Speedup | Steps skipped | Blocks skipped | Amdahl bound | Speedup / bound "
        f"| Peak memory ({meta['memory_kind']}) | PSNR vs no cache |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        db = "∞ (identical)" if r["psnr_db"] is None else f"{r['psnr_db']:.1f} dB"
        lines.append(f"| {r['name']} | {r['time_s']:.2f} s | {r['speedup']:.2f}× | {r['steps_skipped']:.0%} | "
                     f"{r['blocks_skipped']:.0%} | {r['amdahl_bound']:.2f}× | {r['efficiency']:.0%} | "
                     f"{fmt_bytes(r['peak_memory_bytes'])} | {db} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub id or local folder of a diffusers Wan checkpoint (default: embedded)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mid", help="embedded model preset")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--granularity", default="stack", help='"stack", "per_block" or an int k')
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="transformer dtype (default: bfloat16 with --model on a GPU, else float32)")
    parser.add_argument("--teacache", help="three TeaCache thresholds, comma-separated")
    parser.add_argument("--fbcache", help="two FBCache thresholds, comma-separated")
    parser.add_argument("--coefficients", help="TeaCache polynomial, comma-separated, highest degree first")
    parser.add_argument("--wan-variant", default="t2v-1.3B", help="TeaCache coefficients with --model")
    parser.add_argument("--calibrate", action="store_true",
                        help="with --model: fit TeaCache coefficients instead of the published ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--md", default="bench.md")
    args = parser.parse_args(argv)

    preset = CONFIGS[args.config]
    for key in ("height", "width", "frames", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
        if getattr(args, key) < 1:
            parser.error(f"--{key}: expected an int >= 1, got {getattr(args, key)}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected an int >= 1, got {args.repeats}")
    if args.granularity.isdigit():
        args.granularity = int(args.granularity)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("bfloat16" if args.model and args.device.type == "cuda" else "float32")

    components, model_name = load_components(args)
    for module in components.values():
        if isinstance(module, torch.nn.Module):
            module.to(args.device)
    call = dict(prompt=PROMPT, num_frames=args.frames, height=args.height, width=args.width,
                num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="latent")
    try:
        runs, calibration = make_runs(args, components, call)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"bench.py: {exc}") from None
    call_meta = {**call, "branches": ("cond", "uncond") if args.guidance_scale > 1.0 else ("cond",)}

    def run_once(run: dict[str, Any]) -> tuple[float, int, torch.Tensor]:
        generator = torch.Generator("cpu").manual_seed(args.seed)
        with PeakMemory(args.device) as peak:
            start = time.perf_counter()
            latents = run["pipe"](**call, generator=generator).frames
            _sync(args.device)
            elapsed = time.perf_counter() - start
        return elapsed, peak.bytes, latents

    for run in runs:  # warm-up: compiles each plan, fills allocator and thread-pool caches
        _, _, run["latents"] = run_once(run)
        run.update(times=[], peaks=[], deterministic=True)
    split = forward_split(runs[0]["pipe"], call, repeats=max(3, args.repeats))
    for i in range(args.repeats):
        order = runs[i % len(runs):] + runs[:i % len(runs)]  # rotate who goes first
        for run in order:
            elapsed, peak, latents = run_once(run)
            run["times"].append(elapsed)
            run["peaks"].append(peak)
            run["deterministic"] &= torch.equal(latents, run["latents"])
        print(f"round {i + 1}/{args.repeats}: " + ", ".join(f"{r['name']} {r['times'][-1]:.2f}s" for r in runs),
              file=sys.stderr)

    base = runs[0]
    with torch.no_grad():
        reference = face.decode(base["pipe"], base["latents"], "np")
    rows = []
    for run in runs:
        pipe = run["pipe"]
        median = statistics.median(run["times"])
        # Speedup: the median over rounds of (no cache / this), each pair timed side by side, which
        # cancels the machine's slow drifts; the ratio of the medians is kept in the JSON too.
        speedup = statistics.median(b / t for b, t in zip(base["times"], run["times"]))
        of_medians = statistics.median(base["times"]) / median
        if pipe.cache is None:
            steps_skipped = blocks_skipped = skip_ratio = 0.0
            trace = {}
        else:
            stats = pipe.cache.stats
            steps_skipped, skip_ratio = stats.steps_skipped, stats.skip_ratio
            blocks_skipped = block_skip_fraction(pipe, call_meta)
            trace = {f"{b}:{u}": t for (b, u), t in stats.trace.items()}
        with torch.no_grad():
            video = reference if run is base else face.decode(pipe, run["latents"], "np")
        db = psnr(video, reference)
        bound = amdahl_bound(split["fixed_fraction"], blocks_skipped)
        rows.append(dict(
            name=run["name"], policy=run["policy"], kwargs={k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in run["kwargs"].items()},
            time_s=round(median, 4), times_s=[round(t, 4) for t in run["times"]], speedup=round(speedup, 4),
            ratio_of_medians=round(of_medians, 4), steps_skipped=round(steps_skipped, 4),
            unit_skip_ratio=round(skip_ratio, 4), blocks_skipped=round(blocks_skipped, 4),
            amdahl_bound=round(bound, 4), efficiency=round(speedup / bound, 4),
            peak_memory_bytes=max(run["peaks"]), psnr_db=None if math.isinf(db) else round(db, 2),
            deterministic=run["deterministic"], trace=trace))
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    result = dict(
        meta=dict(model=model_name, device=str(args.device), device_name=device_name, dtype=args.dtype,
                  height=args.height, width=args.width, frames=args.frames, steps=args.steps,
                  guidance_scale=args.guidance_scale, granularity=args.granularity, repeats=args.repeats,
                  seed=args.seed, prompt=PROMPT, forward_ms={k: round(v, 3) for k, v in split.items()},
                  fixed_fraction=round(split["fixed_fraction"], 4), memory_kind=PeakMemory(args.device).kind,
                  teacache_calibration=calibration, torch=torch.__version__,
                  command=" ".join(["python", "tests/bench.py", *(argv or sys.argv[1:])])),
        rows=rows)
    table = markdown(result)
    print(table)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    with open(args.md, "w") as fh:
        fh.write(table)
    print(f"wrote {args.out} and {args.md}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
