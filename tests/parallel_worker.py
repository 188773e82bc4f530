"""The processes of `test_parallel.py`: each runs the named scenarios as one rank of a gloo group
and writes what it saw to `out/<scenario>.<rank>.pt` (an error as its message), so the test
process compares ranks with each other and with a single-process run.

Not collected by pytest (no `test_` prefix); started with the `spawn` method, so every process
imports torch and the model afresh, as torchrun's would.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import torch

SIZE = dict(height=32, width=48, num_frames=9)
STEPS = 6
PROMPT = "a red fox running through snow"

#: scenario -> the cache it enables ((policy, kwargs) or None)
CACHES = {
    "plain": None,
    "teacache": ("teacache", dict(rel_l1_thresh=1.0, coefficients=[1.0, 0.0], use_ret_steps=False)),
    "fbcache": ("fbcache", dict(rel_l1_thresh=0.2)),
    "fbcache-per-block": ("fbcache", dict(rel_l1_thresh=0.2, granularity=2)),
    "wan22-teacache": ("teacache", dict(rel_l1_thresh=1.0, coefficients=[1.0, 0.0], use_ret_steps=False)),
}


def pipeline(scenario: str):
    """The tiny pipeline of `scenario`: Wan2.1, or Wan2.2 A14B's two experts (`wan22-*`)."""
    import edit

    comps = edit.tiny_components(seed=0)
    if scenario.startswith("wan22"):
        comps.update(transformer_2=edit.tiny_components(seed=1)["transformer"], boundary_ratio=0.875)
    pipe = edit.EditWanPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    return pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(7), output_type="latent",
                **SIZE, **kwargs).frames


def single(scenario: str) -> dict:
    """What one process gives for `scenario`: latents and trace."""
    pipe = pipeline(scenario)
    cache = CACHES[scenario]
    if cache is not None:
        policy, kwargs = cache
        pipe.enable_cache(policy, **kwargs)
    latents = generate(pipe)
    return {"latents": latents, "trace": None if cache is None else pipe.cache.stats.trace}


def _shard_signal_policy():
    """FBCache's decision, recording each shard's own signal beside the one every rank decides on."""
    from edit.cache import CachePolicy, register_policy, relative_l1
    from edit.passes.policy import _REDUCE

    @register_policy("shard_signal")
    class ShardSignal(CachePolicy):
        needs_first_block_probe = True
        seen: list = []

        def __init__(self, *, rel_l1_thresh: float = 0.2):
            self.rel_l1_thresh = rel_l1_thresh

        def reset(self, state):
            state.user["prev"] = None

        def should_compute(self, ctx):
            r0, prev = ctx.first_block_residual, ctx.state.user["prev"]
            if prev is None:
                ctx.state.user["prev"] = r0
                return True
            token = _REDUCE.set(None)  # this shard's own change, as a policy without the reduction would see it
            try:
                local = relative_l1(r0, prev)
            finally:
                _REDUCE.reset(token)
            agreed = relative_l1(r0, prev)
            ShardSignal.seen.append((ctx.step, ctx.branch, local, agreed))
            hit = agreed < self.rel_l1_thresh
            if not hit:
                ctx.state.user["prev"] = r0
            return not hit

    return ShardSignal


def _rank_local_policy(rank: int):
    """A policy that (wrongly) decides from something only this rank has: rank 1 always computes."""
    from edit.cache import CachePolicy, register_policy

    @register_policy("rank_local")
    class RankLocal(CachePolicy):
        def reset(self, state):
            pass

        def should_compute(self, ctx):
            return ctx.step == 0 or rank == 1

    return RankLocal


def run_scenario(name: str, rank: int, layout: tuple[int, int], out: Path) -> dict:
    pipe = pipeline(name)
    pipe.enable_parallelism(*layout, timeout=20)
    result: dict = {}
    if name in CACHES:
        cache = CACHES[name]
        if cache is not None:
            policy, kwargs = cache
            pipe.enable_cache(policy, **kwargs)
        result["latents"] = generate(pipe)
        if cache is not None:
            stats = pipe.cache.stats
            result.update(trace=stats.trace, ranks=stats.ranks, computed=stats.computed, skipped=stats.skipped,
                          recomputed=stats.recomputed,
                          keys=[(pipe.cache.residuals.owner,) + k for k in pipe.cache.residuals.keys()])
        result["bytes_moved"] = pipe.parallel.bytes_moved
        result["text"] = pipe.compile(STEPS, 5.0, **SIZE).to_text()
    elif name == "mismatch":  # rank 1 folds TeaCache at another threshold: another plan
        pipe.enable_cache("teacache", rel_l1_thresh=1.0 if rank == 0 else 2.0, coefficients=[1.0, 0.0],
                          use_ret_steps=False)
        generate(pipe)
    elif name == "shard-signal":
        policy = _shard_signal_policy()
        pipe.enable_cache("shard_signal", rel_l1_thresh=0.2)
        result["latents"] = generate(pipe)
        result.update(seen=list(policy.seen), trace=pipe.cache.stats.trace)
    elif name == "disagree":
        _rank_local_policy(rank)
        pipe.enable_cache("rank_local")
        generate(pipe)
    elif name == "killed":  # rank 1 dies in the middle of the run; rank 0 must not hang
        def die(p, step, t, kwargs):
            if rank == 1 and step == 2:
                os._exit(3)
            return kwargs
        generate(pipe, callback_on_step_end=die)
    elif name == "cli":
        from edit.cli import main

        result["code"] = main(["generate", PROMPT, "--model", "tiny", "--steps", "4", "--frames", "9",
                               "--height", "32", "--width", "48", "--cache", "fbcache", "--threshold", "0.2",
                               "--parallel", f"cfg={layout[0]},sp={layout[1]}", "--stats", "json",
                               "--out", str(out / f"cli.{rank}.gif")])
    else:
        raise ValueError(f"scenario: unknown {name!r}")
    return result


def main(rank: int, world: int, port: int, layout: tuple[int, int], scenarios: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), EDIT_MODEL="tiny")
    torch.set_num_threads(1)
    out_dir = Path(out)
    for name in scenarios:
        start = time.perf_counter()
        try:
            result = run_scenario(name, rank, layout, out_dir)
        except Exception as err:  # the test reads the message each rank ended with
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - start
        torch.save(result, out_dir / f"{name}.{rank}.pt")
