"""The GPU benchmark: Wan2.1-T2V-1.3B's real transformer configuration with seeded random weights
(built from its config, nothing downloaded), bf16, 480x832, 33 frames, 30 steps, on one GPU.

    python tests/bench_gpu.py                      # on a CUDA machine: the full size, under 8 minutes on an H100
    python tests/bench_gpu.py --smoke              # anywhere (CPU): a tiny model at a tiny size, seconds

Rows, each eager and compiled (`--no-compile` leaves the compiled ones out):
- diffusers `WanPipeline`, no cache (compiled: `transformer.compile()`);
- EDiT, no cache (compiled: `pipe.enable_compile()`);
- EDiT folded at the TeaCache seed's skip ratios (~37%, ~57%, ~67% of steps reused): random
  weights give no meaningful TeaCache signal, so the schedule is forced (evenly spread reuses, the
  first and last steps computed), as a folded TeaCache plan would be;
- diffusers' FirstBlockCache hook (threshold `--fbcache`);
- EDiT folded 57% over a `TieredStore` (GPU tier of one residual, pinned CPU tier of one, disk),
  without and with prefetch: the time the run was blocked reading residuals (`get_seconds`) and
  the prefetches that served reads, from the store's stats.
Per row: median denoising time of `--repeats` calls after a warm-up (compile) call, speedup over
diffusers eager no cache, peak VRAM (`max_memory_allocated`), compile time, and the largest
difference from the matching no-cache output. Prints a table and writes bench_gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

#: Wan2.1-T2V-1.3B's transformer (its config.json), built with random weights.
WAN21_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
#: The seed's skip ratios: TeaCache on Wan2.1-1.3B reuses about these fractions of steps.
RATIOS = (0.37, 0.57, 0.67)


def reused_steps(steps: int, ratio: float) -> list[int]:
    """round(ratio * steps) steps spread evenly over 1..steps-2 (first and last computed)."""
    k = min(round(ratio * steps), steps - 2)
    inner = list(range(1, steps - 1))
    return sorted({inner[int(i * len(inner) / k)] for i in range(k)}) if k else []


def components(args) -> dict:
    import edit
    from diffusers import WanTransformer3DModel

    comps = edit.tiny_components(seed=0)  # tokenizer, text encoder (unused: embeddings are given), VAE, scheduler
    if not args.smoke:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            with torch.device(args.device):
                comps["transformer"] = WanTransformer3DModel(**WAN21_1_3B).to(args.dtype).eval()
    else:
        comps["transformer"] = comps["transformer"].to(args.dtype)
    for key in ("vae", "text_encoder"):
        comps[key] = comps[key].to(args.device)
    comps["transformer"] = comps["transformer"].to(args.device)
    return comps


def inputs(args, comps) -> dict:
    dim = comps["transformer"].config.text_dim
    g = torch.Generator().manual_seed(1)
    text = [torch.randn(1, 512, dim, generator=g).to(args.device, args.dtype) for _ in range(2)]
    return dict(prompt_embeds=text[0], negative_prompt_embeds=text[1], height=args.height, width=args.width,
                num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=5.0, output_type="latent")


def sync(args) -> None:
    if args.device.type == "cuda":
        torch.cuda.synchronize()


def timed(pipe, args, kwargs) -> tuple[float, torch.Tensor]:
    sync(args)
    start = time.perf_counter()
    out = pipe(generator=torch.Generator(args.device).manual_seed(0), **kwargs).frames
    sync(args)
    return time.perf_counter() - start, out


def make(kind: str, comps, args, *, compiled: bool, reuse: list[int] | None = None, tiered: str | None = None):
    import edit
    from diffusers import FirstBlockCacheConfig, WanPipeline
    from edit.passes import SetCells

    if kind.startswith("diffusers"):
        own = {k: copy.deepcopy(v) if k == "transformer" else v for k, v in comps.items()}
        pipe = WanPipeline(**own)
        if kind == "diffusers-fbcache":
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=args.fbcache))
        if compiled:
            pipe.transformer.compile()
    else:
        pipe = edit.EditWanPipeline(**comps)
        if reuse is not None:
            store = None
            if tiered is not None:
                from edit.runtime.store import CPUStore, DiskStore, GPUStore, TieredStore

                residual = pipe.compile(args.steps, 5.0, height=args.height, width=args.width,
                                        num_frames=args.frames).residual_bytes()
                store = TieredStore([(GPUStore(device=args.device), residual), (CPUStore(pin_memory=True), residual),
                                     (DiskStore(tempfile.mkdtemp(prefix="edit-bench-gpu-")), None)])
            passes = [SetCells("reuse", steps=reuse)] if reuse else []
            pipe.enable_cache("none", passes=passes, store=store,
                              prefetch=(1 if tiered == "prefetch" else None) if tiered else "auto")
        if compiled:
            pipe.enable_compile()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_row(name: str, pipe, args, kwargs) -> dict:
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first, out = timed(pipe, args, kwargs)
    times = []
    for _ in range(args.repeats):
        seconds, out = timed(pipe, args, kwargs)
        times.append(seconds)
    row = {"row": name, "median_s": statistics.median(times), "first_call_s": first, "times": times,
           "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.type == "cuda" else None}
    cache = getattr(pipe, "cache", None)
    if cache is not None:
        stats = cache.stats
        row.update(skipped=stats.skipped, computed=stats.computed, get_seconds=stats.get_seconds,
                   store_delta=stats.store_delta)
    compile_stats = getattr(pipe, "compile_stats", None)
    if compile_stats is not None:
        row["compile"] = compile_stats.as_dict()
    print(f"  {name}: {row['median_s']:.3f} s (first call {first:.1f} s)", flush=True)
    return row, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model at a tiny size (any device)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fbcache", type=float, default=0.05, help="diffusers FirstBlockCache threshold")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default="bench_gpu.json")
    args = parser.parse_args()
    args.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.type != "cuda" and not args.smoke:
        raise SystemExit("bench_gpu.py: no CUDA device here; run with --smoke for the small CPU check")
    args.dtype = torch.bfloat16 if args.device.type == "cuda" else torch.float32
    args.height, args.width, args.frames, args.steps = (32, 48, 9, 6) if args.smoke else (480, 832, 33, 30)
    if args.device.type == "cpu":
        torch._inductor.config.compile_threads = 1

    start = time.perf_counter()
    comps = components(args)
    kwargs = inputs(args, comps)
    print(f"{'smoke' if args.smoke else 'Wan2.1-T2V-1.3B config'} on {args.device} "
          f"({torch.cuda.get_device_name() if args.device.type == 'cuda' else 'CPU'}), {args.dtype}, "
          f"{args.height}x{args.width}, {args.frames} frames, {args.steps} steps", flush=True)
    rows, outputs = [], {}
    plans = [("diffusers no cache", "diffusers", None, None), ("EDiT no cache", "edit", None, None)]
    plans += [(f"EDiT folded {round(r * 100)}%", "edit", reused_steps(args.steps, r), None) for r in RATIOS]
    plans += [("diffusers FBCache", "diffusers-fbcache", None, None)]
    modes = [False] if args.no_compile else [False, True]
    for compiled in modes:
        for name, kind, reuse, tiered in plans:
            label = f"{name}{', compiled' if compiled else ''}"
            row, out = run_row(label, make(kind, comps, args, compiled=compiled, reuse=reuse, tiered=tiered), args,
                               kwargs)
            outputs[label] = out
            rows.append(row)
    half = reused_steps(args.steps, 0.57)
    for tiered in ("no prefetch", "prefetch"):
        label = f"EDiT folded 57%, tiered store, {tiered}"
        row, out = run_row(label, make("edit", comps, args, compiled=False, reuse=half,
                                       tiered="prefetch" if tiered == "prefetch" else "none"), args, kwargs)
        outputs[label] = out
        rows.append(row)
    base = next(r["median_s"] for r in rows if r["row"] == "diffusers no cache")
    reference = outputs["diffusers no cache"].float()
    for row in rows:
        row["speedup"] = base / row["median_s"]
        row["max_abs_diff_vs_diffusers"] = float((outputs[row["row"]].float() - reference).abs().max())
    print(f"\n{'row':46} {'median s':>9} {'speedup':>8} {'VRAM GB':>8} {'1st call s':>10} {'blocked s':>9} {'diff':>9}")
    for r in rows:
        vram = "" if r["peak_vram_gb"] is None else f"{r['peak_vram_gb']:.2f}"
        blocked = "" if "get_seconds" not in r else f"{r['get_seconds']:.3f}"
        print(f"{r['row']:46} {r['median_s']:9.3f} {r['speedup']:8.2f} {vram:>8} {r['first_call_s']:10.1f} "
              f"{blocked:>9} {r['max_abs_diff_vs_diffusers']:9.2e}")
    Path(args.out).write_text(json.dumps({"device": str(args.device), "smoke": args.smoke, "steps": args.steps,
                                          "size": [args.height, args.width, args.frames], "rows": rows},
                                         indent=1, default=str))
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
