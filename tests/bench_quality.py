"""What each cache policy does to a generation of the trained toy Wan: speed against quality.

    python tests/bench_quality.py [--prompts 4] [--steps 30] [--out assets/bench_quality.json]
                                  [--plot assets/bench_quality.png] [--replot]

On held-out captions and seeds (never drawn in training), 30 steps, guidance 5, 17x64x64, every
configuration runs beside an uncached run of the same prompt and seed in this process, and reports:
- `computed`: the fraction of transformer forwards whose last block ran (a hook on its
  feed-forward, the same count for EDiT's policies and diffusers' hooks);
- `speedup`: uncached wall time over this run's, median over the prompts (decoding included; the
  uncached run of a pair goes first for even prompts, second for odd ones);
- `psnr`, `ssim`, `temporal`: `edit.metrics.compare` of the video against the uncached one,
  medians over the prompts.

Configurations: EDiT's TeaCache (with the toy's own calibrated coefficients), FBCache and MagCache
(ratios from `calibrate_magcache` on another prompt) over thresholds, a FORA-style static schedule
(`set_cells`: compute every N-th step, reuse between), the searched schedule (`edit.search`,
calibrated on other captions) at each EDiT row's computed steps, and diffusers' own hooks on the
same components: FirstBlockCacheConfig, TaylorSeerCacheConfig, SeaCacheConfig and MagCacheConfig
(its ratios calibrated on another prompt with `calibrate=True`). The JSON's `search` entry holds the
matched comparisons, the three budgets, each held-out prompt's own best against the shared
schedule, and the search's and calibration's times; `--only-edit` reruns EDiT's rows and keeps the
diffusers rows already in the JSON.
TaylorSeer runs in its lite mode, the only one that hooks a Wan transformer without patterns of
its own (see `diffusers_configs`).
Writes the JSON and a speed-quality plot (a line per policy).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def held_out_prompts(count: int) -> list[str]:
    from edit.toy import data

    return [c.caption for c in data.batch(4242, count, two=0)]


class LastBlockCounter:
    """Counts the forwards in which the transformer's last block ran: its feed-forward's calls (a
    hook on the block itself would fire for diffusers' hooks too, which replace the block's forward
    and return a cached output)."""

    def __init__(self, transformer):
        self.calls = 0
        self.handle = transformer.blocks[-1].ffn.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def close(self):
        self.handle.remove()


def run(pipe, prompt: str, seed: int, steps: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    frames = pipe(prompt, num_inference_steps=steps, guidance_scale=5.0, num_frames=17, height=64, width=64,
                  generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
    return frames, time.perf_counter() - start


def fora_passes(steps: int, interval: int, warm: int = 2):
    from edit.passes import Pipeline

    reuse = [s for s in range(warm, steps - 1) if (s - warm) % interval]
    return Pipeline.parse(f"set_cells(mode=reuse, steps={reuse})").passes


def edit_configs(steps: int, mag_ratios: tuple[float, ...] = ()) -> list[tuple[str, Any, Callable]]:
    """(policy, setting, enable(pipe)) for EDiT's own policies (MagCache with `mag_ratios`, when given)."""
    out = []
    for t in (0.05, 0.1, 0.2, 0.3, 0.5):
        out.append(("edit teacache", t, lambda p, t=t: p.enable_cache("teacache", rel_l1_thresh=t, num_inference_steps=steps)))
    for t in (0.05, 0.1, 0.2, 0.3):
        out.append(("edit fbcache", t, lambda p, t=t: p.enable_cache("fbcache", rel_l1_thresh=t, num_inference_steps=steps)))
    for n in (2, 3, 4):
        out.append(("edit set_cells (FORA)", n, lambda p, n=n: p.enable_cache(
            "none", passes=fora_passes(steps, n), num_inference_steps=steps)))
    for t in (0.06, 0.12, 0.3) if mag_ratios else ():
        out.append(("edit magcache", t, lambda p, t=t: p.enable_cache(
            "magcache", mag_ratios=mag_ratios, threshold=t, max_skip_steps=4, num_inference_steps=steps)))
    return out


def search_rows(results, components, prompts, steps, reference, calibration_prompts, make) -> dict[str, Any]:
    """The searched schedule at the computed-cell count of each EDiT baseline row (no more computes
    than it had), a line of `edit search` rows; then, at the three budgets, each baseline beside the
    search, each held-out prompt's own best schedule beside the shared one, and the search's times."""
    from edit.passes.search import solve
    from edit.search import measure_edges

    size = dict(height=64, width=64, num_frames=17)
    start = time.perf_counter()
    calibration = measure_edges(make(), calibration_prompts, num_inference_steps=steps,
                                seeds=list(range(1, len(calibration_prompts) + 1)), **size)
    calibration_s = time.perf_counter() - start
    costs = calibration.combined()
    baselines = [r for r in results if r["policy"].startswith("edit ") and r["policy"] != "edit search"]
    budgets = sorted({int(r["computed"] * steps + 1e-9) for r in baselines if r["computed"] < 0.95})
    rows = {}
    for k in budgets:
        schedule = solve(costs, steps, k, "sum")
        rows[k] = dict(policy="edit search", setting=k, schedule=list(schedule.computed),
                       predicted=schedule.value, **measure(_searched(make, schedule), prompts, steps, reference))
        results.append(rows[k])
        print(f"{'edit search':<28} {k:<6} computed {rows[k]['computed']:.2f}  psnr {rows[k]['psnr']:6.2f}", flush=True)
    matched = []
    for r in baselines:
        k = int(r["computed"] * steps + 1e-9)
        if k in rows:
            matched.append(dict(baseline=f"{r['policy']} {r['setting']:g}", computed=r["computed"],
                                baseline_psnr=r["psnr"], search_computed=rows[k]["computed"],
                                search_psnr=rows[k]["psnr"], margin_db=rows[k]["psnr"] - r["psnr"]))
    # the three budgets of the issue: about 40%, 55% and 70% of the cells reused
    targets = {}
    for skipped in (0.40, 0.55, 0.70):
        k = min(budgets, key=lambda b: abs(b / steps - (1 - skipped)))
        near = [m for m in matched if int(m["computed"] * steps + 1e-9) == k]
        if near:
            best = max(near, key=lambda m: m["baseline_psnr"])
            targets[f"{int(skipped * 100)}% reused"] = dict(computed_steps=k, best_baseline=best["baseline"],
                                                            best_baseline_psnr=best["baseline_psnr"],
                                                            search_psnr=rows[k]["psnr"],
                                                            margin_db=rows[k]["psnr"] - best["baseline_psnr"])
    # golden path: each held-out prompt's own best schedule against the shared one
    own = measure_edges(make(), prompts, num_inference_steps=steps, seeds=[1000 + i for i in range(len(prompts))],
                        **size)
    golden = []
    for label, target in targets.items():
        k = target["computed_steps"]
        shared = solve(costs, steps, k, "sum")
        for i, prompt in enumerate(prompts):
            best = solve(own.per_prompt[i], steps, k, "sum")
            shared_psnr = measure(_searched(make, shared), [prompt], steps, reference, first_seed=1000 + i)["psnr"]
            own_psnr = measure(_searched(make, best), [prompt], steps, reference, first_seed=1000 + i)["psnr"]
            golden.append(dict(budget=label, prompt=prompt, shared_psnr=shared_psnr, own_best_psnr=own_psnr,
                               gap_db=own_psnr - shared_psnr))
    timing = {}
    for n in (30, 50):
        import random

        rng = random.Random(0)
        fake = {(i, j): (j - i - 1) * rng.random() for i in range(n) for j in range(i + 1, n + 1)}
        t0 = time.perf_counter()
        solve(fake, n, n // 2, "sum")
        timing[f"solve_{n}_steps_s"] = time.perf_counter() - t0
    run_s = statistics.median(run(reference, prompts[0], 1000, steps)[1] for _ in range(2))
    return dict(matched=matched, targets=targets, golden_path=golden, search_times=timing,
                calibration=dict(prompts=calibration_prompts, seconds=calibration_s, uncached_runs=calibration.runs,
                                 in_uncached_runs=calibration_s / run_s))


def _searched(make, schedule):
    from edit.passes import Searched

    def enable():
        pipe = make()
        pipe.enable_cache("none", passes=[Searched.of(schedule)])
        return pipe
    return enable


def magcache_ratios(components: dict, steps: int, prompt: str) -> list[float]:
    """diffusers' own MagCache calibration (`calibrate=True` prints the ratios at the end of a run)."""
    from diffusers import MagCacheConfig, WanPipeline

    comps = dict(components, transformer=copy.deepcopy(components["transformer"]))
    pipe = WanPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(pipe, prompt, 7, steps)
    lists = [line for line in printed.getvalue().splitlines() if line.strip().startswith("[")]
    return [float(v) for v in ast.literal_eval(lists[-1])]


def diffusers_configs(components: dict, steps: int, calibration_prompt: str) -> list[tuple[str, Any, Callable]]:
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, SeaCacheConfig, TaylorSeerCacheConfig

    ratios = magcache_ratios(components, steps, calibration_prompt)
    out = []
    for t in (0.05, 0.1, 0.2):
        out.append(("diffusers FirstBlockCache", t, lambda t=t: FirstBlockCacheConfig(threshold=t)))
    for n in (2, 3, 4):
        # lite mode: the blocks skipped, `proj_out` predicted. The default patterns hook nothing on Wan
        # (`^blocks.*attn` must fullmatch, and Wan's are `blocks.N.attn1`/`attn2`): a run that
        # computes every block, identical to the uncached one
        out.append(("diffusers TaylorSeer (lite)", n, lambda n=n: TaylorSeerCacheConfig(
            cache_interval=n, disable_cache_before_step=2, taylor_factors_dtype=torch.float32, use_lite_mode=True)))
    for t in (0.1, 0.25, 0.5):
        out.append(("diffusers SeaCache", t, lambda t=t: SeaCacheConfig(threshold=t)))
    for t in (0.02, 0.06, 0.12):
        out.append(("diffusers MagCache", t, lambda t=t: MagCacheConfig(
            threshold=t, num_inference_steps=steps, mag_ratios=ratios)))
    return out


def measure(make_pipe: Callable, prompts: list[str], steps: int, reference_pipe, first_seed: int = 1000) -> dict[str, Any]:
    pipe = make_pipe()
    counter = LastBlockCounter(pipe.transformer)
    rows = []
    for i, prompt in enumerate(prompts):
        seed = first_seed + i
        # side by side, the order alternating from one prompt to the next so that neither run of a
        # pair always finds the caches warmer
        if i % 2 == 0:
            reference, t_ref = run(reference_pipe, prompt, seed, steps)
        counter.calls = 0
        frames, t = run(pipe, prompt, seed, steps)
        calls = counter.calls
        if i % 2 == 1:
            reference, t_ref = run(reference_pipe, prompt, seed, steps)
        metrics = edit_metrics(frames, reference)
        rows.append(dict(speedup=t_ref / t, computed=calls / (2 * steps), **metrics))
    counter.close()
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def edit_metrics(frames: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from edit.metrics import compare

    result = compare(np.clip(frames, 0, 1), np.clip(reference, 0, 1))
    return dict(psnr=min(result["psnr"], 100.0), ssim=result["ssim"], temporal=result["temporal"])


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """PSNR against the speedup (what a user gains; noisy on a shared CPU) and against the computed
    fraction (what a policy spends; exact), a line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110, sharey=True)
    for ax, x, label in ((axes[0], "speedup", "speedup over the uncached run (wall time, decoding included)"),
                         (axes[1], "computed", "computed fraction (forwards whose last block ran)")):
        for policy in dict.fromkeys(r["policy"] for r in results):
            rows = sorted((r for r in results if r["policy"] == policy), key=lambda r: r[x])
            ax.plot([r[x] for r in rows], [r["psnr"] for r in rows], marker="o", label=policy,
                    linestyle="--" if policy.startswith("diffusers") else "-")
            for r in rows:
                ax.annotate(f"{r['setting']:g}", (r[x], r["psnr"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].invert_xaxis()  # less computed to the right, as more speed is on the left panel
    axes[0].set_ylabel("PSNR against the uncached video (dB)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Cache policies on the trained toy Wan (30 steps, CFG 5, held-out prompts and seeds)")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from diffusers import WanPipeline

    import edit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "assets" / "bench_quality.json"))
    parser.add_argument("--plot", default=str(ROOT / "assets" / "bench_quality.png"))
    parser.add_argument("--folder", default=None, help="a trained toy pipeline folder (default: the shipped one)")
    parser.add_argument("--replot", action="store_true", help="only draw --plot again from the JSON at --out")
    parser.add_argument("--only-edit", action="store_true",
                        help="run EDiT's rows and the search only; keep the diffusers rows of the JSON at --out")
    args = parser.parse_args(argv)
    if args.replot:
        out = json.loads(Path(args.out).read_text())
        plot(out["results"], Path(args.plot))
        print(f"wrote {args.plot}")
        return out
    torch.manual_seed(0)
    base = edit.toy_pipeline(folder=args.folder)
    base.set_progress_bar_config(disable=True)
    components = dict(base.components)
    prompts = held_out_prompts(args.prompts + 1)
    calibration_prompt, prompts = prompts[0], prompts[1:]
    reference = edit.EditWanPipeline(**components)
    reference.set_progress_bar_config(disable=True)
    results = []

    def ours(enable):
        def make():
            pipe = edit.EditWanPipeline(**components)
            pipe.set_progress_bar_config(disable=True)
            enable(pipe)
            return pipe
        return make

    def theirs(config):
        def make():
            comps = dict(components, transformer=copy.deepcopy(components["transformer"]))  # hooks attach
            pipe = WanPipeline(**comps)
            pipe.set_progress_bar_config(disable=True)
            pipe.transformer.enable_cache(config())
            return pipe
        return make

    from edit.cache import calibrate_magcache
    from edit.toy import data

    mag = calibrate_magcache(ours(lambda p: None)(), [calibration_prompt], num_inference_steps=args.steps, seed=7,
                             height=64, width=64, num_frames=17).ratios
    configs = [(p, s, ours(e)) for p, s, e in edit_configs(args.steps, mag)]
    if args.only_edit:
        kept = [r for r in json.loads(Path(args.out).read_text())["results"] if r["policy"].startswith("diffusers")]
    else:
        kept = []
        configs += [(p, s, theirs(c)) for p, s, c in diffusers_configs(components, args.steps, calibration_prompt)]
    for policy, setting, make in configs:
        row = dict(policy=policy, setting=setting, **measure(make, prompts, args.steps, reference))
        results.append(row)
        print(f"{policy:<28} {setting:<6g} computed {row['computed']:.2f}  speedup {row['speedup']:.2f}x  "
              f"psnr {row['psnr']:6.2f}  ssim {row['ssim']:.4f}  temporal {row['temporal']:.4f}", flush=True)
    # the search calibrates on captions neither held out nor the baselines' calibration prompt
    search = search_rows(results, components, prompts, args.steps, reference,
                         [c.caption for c in data.batch(777, 4, two=0)], ours(lambda p: None))
    results += kept
    out = dict(meta=dict(prompts=prompts, steps=args.steps, guidance=5.0, size="17x64x64",
                         torch=torch.__version__, threads=torch.get_num_threads()), results=results, search=search)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    plot(results, Path(args.plot))
    print(f"wrote {args.out} and {args.plot}")
    return out


if __name__ == "__main__":
    main()
