"""Several ranks: bytes moved per step in each layout (measured, beside the formula), and wall time
of one process with 2 threads against 2 processes with 1 thread each.

    python tests/bench_parallel.py                     # mid config, 10 steps, 3 rounds (CPU, gloo)
    python tests/bench_parallel.py --config tiny --steps 4 --rounds 1   # a smoke run

Each round runs, in rotating order: one process (`torch.set_num_threads(2)`), CFG-parallel
(`cfg=2`, 2 processes x 1 thread) and sequence-parallel (`sp=2`, 2 processes x 1 thread), the
denoising loop timed inside the processes (median over the round's calls; process start and
model building are not counted). Bytes are counted at the collectives: the CFG exchange, the
head's gather, the Ulysses all-to-all inside attention (diffusers' `_all_to_all_single`) and the
run-time reductions. On CUDA (a GPU machine with 2 devices) the same script runs on NCCL.
Prints a table and writes bench_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS  # noqa: E402

PROMPT = "a red fox running through snow, cinematic, golden hour"


def build(config: str):
    import edit

    spec = CONFIGS[config]
    pipe = edit.EditWanPipeline(**edit.tiny_components(seed=0, **spec["model"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, args) -> tuple[float, torch.Tensor]:
    spec = CONFIGS[args.config]
    start = time.perf_counter()
    out = pipe(PROMPT, num_inference_steps=args.steps, height=spec["height"], width=spec["width"],
               num_frames=spec["frames"], generator=torch.Generator().manual_seed(0), output_type="latent").frames
    return time.perf_counter() - start, out


def count_all_to_all() -> list[int]:
    """Bytes this rank sends through diffusers' Ulysses all-to-all (the (n-1)/n of each tensor
    that leaves the rank)."""
    from diffusers.models import attention_dispatch

    sent = [0]
    original = attention_dispatch._all_to_all_single

    def counted(x, group):
        n = torch.distributed.get_world_size(group)
        sent[0] += x.numel() * x.element_size() * (n - 1) // n
        return original(x, group)
    attention_dispatch._all_to_all_single = counted
    return sent


def rank_main(rank: int, world: int, port: int, layout: tuple[int, int], args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    pipe = build(args.config)
    pipe.enable_parallelism(*layout, timeout=300)
    attention = count_all_to_all()
    call(pipe, args)  # warm-up (allocations, groups)
    times = []
    for _ in range(args.calls):
        attention[0] = 0
        seconds, latents = call(pipe, args)
        times.append(seconds)
    if rank == 0:
        torch.save({"times": times, "exchange_and_gather": pipe.parallel.bytes_moved, "attention": attention[0],
                    "latents": latents}, Path(out) / f"{layout[0]}x{layout[1]}.pt")


def run_layout(layout: tuple[int, int], args, out: Path) -> dict:
    world = layout[0] * layout[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world, port, layout, args, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"bench_parallel.py: a rank of layout {layout} failed: {[p.exitcode for p in procs]}")
    return torch.load(out / f"{layout[0]}x{layout[1]}.pt", weights_only=False)


def single(args, pipe) -> dict:
    torch.set_num_threads(2)
    call(pipe, args)
    times, latents = [], None
    for _ in range(args.calls):
        seconds, latents = call(pipe, args)
        times.append(seconds)
    return {"times": times, "latents": latents}


def formulas(args, latents: torch.Tensor, pipe) -> dict:
    """Bytes one rank sends per step, from the sizes: CFG — its branch's noise prediction; sequence
    (n=2 ranks) — per forward and block, Ulysses' q, k, v and output all-to-all (each (n-1)/n of
    a shard of (tokens/n) x heads x head_dim), and the head's gather of its (tokens/n) x dim shard."""
    config = pipe.transformer.config
    elt = latents.element_size()
    p_t, p_h, p_w = config.patch_size
    batch, _, frames, height, width = latents.shape
    tokens = batch * (frames // p_t) * (height // p_h) * (width // p_w)
    dim = config.num_attention_heads * config.attention_head_dim
    n = 2
    shard = tokens // n * dim * elt
    forwards = 2  # cond and uncond, both on every rank of the group
    return {"cfg=2": latents.numel() * elt,
            "sp=2": forwards * (config.num_layers * 4 * shard * (n - 1) // n + shard * (n - 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="mid")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2, help="timed calls per round and layout")
    parser.add_argument("--out", default="bench_parallel.json")
    args = parser.parse_args()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_parallel.{os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)

    pipe = build(args.config)
    rows: dict[str, dict] = {"1 process x 2 threads": {"times": []}, "cfg=2 (2 x 1 thread)": {"times": []},
                             "sp=2 (2 x 1 thread)": {"times": []}}
    layouts = {"cfg=2 (2 x 1 thread)": (2, 1), "sp=2 (2 x 1 thread)": (1, 2)}
    reference = None
    for round_ in range(args.rounds):
        names = list(rows)
        names = names[round_ % 3:] + names[:round_ % 3]  # rotate who goes first
        for name in names:
            got = single(args, pipe) if name not in layouts else run_layout(layouts[name], args, out)
            rows[name]["times"] += got["times"]
            if name not in layouts:
                reference = got["latents"]
            else:
                rows[name].update(exchange_and_gather=got["exchange_and_gather"], attention=got["attention"],
                                  latents=got["latents"])
    expected = formulas(args, reference, pipe)
    base = statistics.median(rows["1 process x 2 threads"]["times"])
    table = []
    for name, row in rows.items():
        median = statistics.median(row["times"])
        entry = {"layout": name, "median_s": round(median, 3), "speedup": round(base / median, 3),
                 "runs": len(row["times"])}
        if name in layouts:
            moved = row["exchange_and_gather"] + row["attention"]
            key = name.split(" ")[0]
            entry.update(bytes_per_step=moved // args.steps, formula_bytes_per_step=expected[key],
                         max_abs_diff=float((row["latents"] - reference).abs().max()),
                         equal=bool(torch.equal(row["latents"], reference)))
        table.append(entry)
    print(f"config {args.config}, {args.steps} steps, {args.rounds} rounds x {args.calls} calls, "
          f"backend {'nccl' if torch.cuda.is_available() else 'gloo'}")
    print(f"{'layout':24} {'median':>8} {'speedup':>8} {'bytes/step':>12} {'formula':>12} {'equal':>6} {'max diff':>9}")
    for e in table:
        print(f"{e['layout']:24} {e['median_s']:8.3f} {e['speedup']:8.3f} {e.get('bytes_per_step', ''):>12} "
              f"{e.get('formula_bytes_per_step', ''):>12} {str(e.get('equal', '')):>6} {e.get('max_abs_diff', ''):>9}")
    Path(args.out).write_text(json.dumps({"config": args.config, "steps": args.steps, "rounds": args.rounds,
                                          "rows": table}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
