"""Several ranks on torch.distributed: CFG-parallel and sequence-parallel runs of one plan.

Ranks are laid out as a (cfg, sequence) grid: rank = group * sequence + shard. The ranks of one
CFG group compute one branch (`place(cfg=2)`: cond on group 0, uncond on group 1); within a
group, each rank holds one shard of the tokens (`sequence`), and attention crosses the shards
through diffusers' own context parallelism (Ulysses all-to-all, `ContextParallelConfig`).

Every rank runs the same plan by construction: a folded plan is compared across ranks (a digest,
then the first differing line) before a run; a run-time signal computed on a shard is reduced
over the group before the threshold (`edit.passes.relative_l1` under `reducing`), and each
run-time decision is checked to agree, so a rank that would take another path stops every rank
with one error instead of a deadlock. Collectives time out (`timeout`): a rank that died ends the
run on the others with an error.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist

from edit.graph import Cell, Exchange, Graph

#: torchrun's variables: a process started by it joins the group they describe.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class ParallelError(RuntimeError):
    """A run across ranks cannot go on: plans or decisions differ, or a rank stopped answering."""


def check_degrees(cfg: Any, sequence: Any) -> tuple[int, int]:
    for name, value in (("cfg", cfg), ("sequence", sequence)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    if cfg > 2:
        raise ValueError(f"cfg: expected 1 or 2 (one CFG group per branch), got {cfg!r}")
    return cfg, sequence


def parse_layout(text: str) -> tuple[int, int]:
    """'cfg=2,sp=2' (also 'sequence=2', 'cfg=2') -> (cfg, sequence); ValueError naming what is wrong."""
    out = {"cfg": 1, "sequence": 1}
    for item in str(text).split(","):
        name, sep, value = item.strip().partition("=")
        name = {"sp": "sequence", "seq": "sequence"}.get(name.strip(), name.strip())
        if not sep or name not in out or not value.strip().isdigit():
            raise ValueError(f"expected cfg=N and/or sp=N separated by commas (e.g. cfg=2,sp=2), got {text!r}")
        out[name] = int(value)
    return check_degrees(out["cfg"], out["sequence"])


def init_process_group(world_size: int, *, backend: str | None = None, timeout: float = 60.0) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT);
    `gloo` on CPU, `nccl` on CUDA. A group already initialised is used as it is."""
    if dist.is_initialized():
        return
    missing = [v for v in TORCHRUN_ENV if v not in os.environ]
    if missing:
        raise ValueError(f"parallel: {world_size} processes are needed and torch.distributed is not initialised; "
                         f"start them with torchrun --nproc-per-node {world_size} (missing {', '.join(missing)})")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


@attrs.frozen(eq=False)
class Exchanged:
    """The noise predictions of both branches after a step's `Exchange`."""

    cond: torch.Tensor
    uncond: torch.Tensor


class ParallelRun:
    """This process's place in a (cfg, sequence) layout, its process groups, and the collectives a
    plan's run needs. Made by `setup` (every rank, in the same order)."""

    def __init__(self, cfg: int, sequence: int, *, timeout: float = 60.0):
        self.cfg, self.sequence = check_degrees(cfg, sequence)
        self.world = dist.get_world_size()
        if self.world != cfg * sequence:
            raise ValueError(f"parallel: cfg={cfg} x sequence={sequence} needs {cfg * sequence} processes, "
                             f"this group has {self.world}")
        self.rank = dist.get_rank()
        self.group, self.shard = divmod(self.rank, sequence)
        self.timeout = timeout
        self.backend = dist.get_backend()
        # new_group is collective: every rank makes every group, in one order
        self.cfg_group = self.sp_group = None
        for shard in range(sequence):
            ranks = [g * sequence + shard for g in range(cfg)]
            made = dist.new_group(ranks) if cfg > 1 else None
            if shard == self.shard:
                self.cfg_group, self.cfg_ranks = made, ranks
        for group in range(cfg):
            ranks = [group * sequence + s for s in range(sequence)]
            made = dist.new_group(ranks) if sequence > 1 else None
            if group == self.group:
                self.sp_group, self.sp_ranks = made, ranks
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" \
            else torch.device("cpu")
        self.mesh = None  # (ring, ulysses) over this CFG group's ranks: diffusers' context-parallel mesh
        if sequence > 1:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.device.type, (cfg, 1, sequence),
                                         mesh_dim_names=("cfg", "ring", "ulysses"))["ring", "ulysses"]
        self.bytes_moved = 0  # what this rank sent through the run's collectives (bench_parallel reads it)

    def __repr__(self) -> str:
        return (f"<ParallelRun rank {self.rank}/{self.world}: cfg={self.cfg} (group {self.group}), "
                f"sequence={self.sequence} (shard {self.shard}), {self.backend}>")

    def _failed(self, what: str, err: Exception) -> ParallelError:
        return ParallelError(f"parallel: rank {self.rank}: {what} failed (another rank stopped, or did not answer "
                             f"within {self.timeout:g} s): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    def shard_owner(self, owner: str) -> str:
        """A cache namespace's owner with this rank's shard in it: every residual key names the
        shard it was computed on (and a rank reads only its own)."""
        base = owner.split("@", 1)[0]
        return base if self.sequence == 1 and self.cfg == 1 else f"{base}@rank{self.rank}.shard{self.shard}of{self.sequence}"

    # -- plans -----------------------------------------------------------------------------------
    def agree_plan(self, graph: Graph) -> None:
        """Every rank must run the same plan: compare digests; on a difference, name the first
        differing line (a cell's, when a cell differs) on every rank, and stop them all."""
        lines = plan_lines(graph)
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        digests = self._all_objects(digest, "comparing the plans")
        if len(set(digests)) == 1:
            return
        other = next(r for r, d in enumerate(digests) if d != digests[0])
        texts = self._all_objects(lines, "comparing the plans")
        raise ParallelError(first_difference(texts[0], texts[other], other))

    def _all_objects(self, value: Any, what: str) -> list[Any]:
        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, value)
        except Exception as err:
            raise self._failed(what, err) from err
        return out

    # -- the run's collectives -------------------------------------------------------------------
    def exchange(self, node: Exchange, local: dict[str, torch.Tensor | None]) -> Exchanged:
        """Both branches' noise predictions on every rank: one all-gather over the CFG group."""
        mine = next(b for b, g in node.placement if g == self.group)
        value = local[mine]
        if value is None:
            raise ValueError(f"%{node.name}: rank {self.rank} (CFG group {self.group}) has no {mine} prediction")
        value = value.contiguous()
        parts = [torch.empty_like(value) for _ in range(self.cfg)]
        try:
            dist.all_gather(parts, value, group=self.cfg_group)
        except Exception as err:
            raise self._failed(f"the all-gather of %{node.name}", err) from err
        self.bytes_moved += value.numel() * value.element_size() * (self.cfg - 1)
        return Exchanged(**{branch: parts[group] for branch, group in node.placement})

    def split(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's shard of `tensor` along `dim` (the tokens)."""
        size = tensor.shape[dim]
        if size % self.sequence:
            raise ValueError(f"sequence: {size} tokens do not split into {self.sequence} equal shards; choose a "
                             f"size whose patch count is a multiple of {self.sequence}")
        return tensor.narrow(dim, self.shard * (size // self.sequence), size // self.sequence)

    def gather(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The whole of a sharded `tensor`, on every rank of the group (one all-gather)."""
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.sequence)]
        try:
            dist.all_gather(parts, tensor, group=self.sp_group)
        except Exception as err:
            raise self._failed("gathering the shards for the head", err) from err
        self.bytes_moved += tensor.numel() * tensor.element_size() * (self.sequence - 1)
        return torch.cat(parts, dim=dim)

    def reduce_sums(self, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Partial sums summed over the ranks of this CFG group (a run-time signal on a shard)."""
        packed = torch.stack([v.float().reshape(()) for v in values]).to(self.device)
        try:
            dist.all_reduce(packed, group=self.sp_group)
        except Exception as err:
            raise self._failed("reducing a run-time signal", err) from err
        self.bytes_moved += packed.numel() * packed.element_size()
        return tuple(packed.unbind())

    def agree_decision(self, cell: Cell, compute: bool) -> bool:
        """Check that every rank of the group decided `cell` alike; raise on all of them if not."""
        flag = torch.tensor([1 if compute else 0], dtype=torch.int64, device=self.device)
        parts = [torch.empty_like(flag) for _ in range(self.sequence)]
        try:
            dist.all_gather(parts, flag, group=self.sp_group)
        except Exception as err:
            raise self._failed(f"agreeing on %{cell.name}", err) from err
        self.bytes_moved += flag.element_size()
        votes = [int(p.item()) for p in parts]
        if len(set(votes)) > 1:
            computing = [r for r, v in zip(self.sp_ranks, votes) if v]
            reusing = [r for r, v in zip(self.sp_ranks, votes) if not v]
            raise ParallelError(f"parallel: the ranks of CFG group {self.group} decided %{cell.name} differently "
                                f"(ranks {computing} compute, ranks {reusing} reuse): a run-time signal depends on "
                                "a rank's shard; reduce it over the group (edit.passes.relative_l1 does)")
        return compute

    @contextlib.contextmanager
    def reducing(self) -> Iterator[None]:
        """`relative_l1` sums over the group's shards inside the block (sequence > 1)."""
        from edit.passes.policy import reduced_relative_l1

        if self.sequence == 1:
            yield
            return
        with reduced_relative_l1(self.reduce_sums):
            yield

    # -- stats -----------------------------------------------------------------------------------
    _LOCAL = ("computed", "skipped", "recomputed", "recomputed_cells", "rows")

    def gather_stats(self, stats: Any, graph: Graph) -> None:
        """Every rank's counters and trace, merged into `stats` so it covers the whole run (each
        cell counted once: by shard 0 of the group that ran it); `stats.ranks` says what each rank
        did, and `stats.local` keeps this rank's own counters (a run that goes on from them,
        `reset_cache=False`, starts from those: `resume_stats`)."""
        from edit.runtime.executor import placement

        placed = placement(graph)
        branches = sorted(b for b in graph.spec.branches if placed.get(b, self.group) == self.group)
        local = {k: getattr(stats, k) for k in self._LOCAL}
        mine = {"rank": self.rank, "group": self.group, "shard": self.shard, "branches": branches,
                "computed": stats.computed, "skipped": stats.skipped, "recomputed": stats.recomputed,
                "rows": {k: v for k, v in stats.rows.items() if k[1] in branches},
                "recomputed_cells": list(stats.recomputed_cells), "bytes_moved": self.bytes_moved}
        everyone = self._all_objects(mine, "gathering the cache stats")
        rows: dict = {}
        computed = skipped = recomputed = 0
        cells: list = []
        for info in everyone:
            if info["shard"] != 0:
                continue
            rows.update(info["rows"])
            computed, skipped = computed + info["computed"], skipped + info["skipped"]
            recomputed += info["recomputed"]
            cells += info["recomputed_cells"]
        stats.rows, stats.computed, stats.skipped = dict(sorted(rows.items())), computed, skipped
        stats.recomputed, stats.recomputed_cells = recomputed, cells
        stats.local = local
        stats.ranks = [{k: v for k, v in info.items() if k not in ("rows", "recomputed_cells")}
                       | {"trace": {":".join(map(str, k)): "".join(r) for k, r in sorted(info["rows"].items())}}
                       for info in everyone]

    def resume_stats(self, stats: Any) -> None:
        """Back to this rank's own counters before a run that continues them."""
        local = getattr(stats, "local", None)
        if local is not None:
            for k, v in local.items():
                setattr(stats, k, v)
            stats.local = None


def plan_lines(graph: Graph) -> list[str]:
    """What ranks compare, a line each: the printed graph (so a difference names its first cell),
    then the pipeline text and the fingerprint (weights, sizes, ...)."""
    fingerprint = getattr(graph, "fingerprint", {}) or {}
    return (graph.to_text().splitlines() + [f"pipeline: {getattr(graph, 'pipeline', '')}"]
            + [f"fingerprint.{k}: {fingerprint[k]!r}" for k in sorted(fingerprint)])


def first_difference(a: list[str], b: list[str], other: int) -> str:
    """Rank 0's and rank `other`'s plans differ: say where, naming the node of the first differing line."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            name = x.split(" = ", 1)[0] if x.startswith("%") else x.split(":", 1)[0]
            return (f"parallel: rank {other} compiled another plan than rank 0, first at {name}: rank 0 has "
                    f"{x.strip()!r}, rank {other} has {y.strip()!r}; every rank must run the same plan (same "
                    "weights, policy, arguments and passes)")
    return (f"parallel: rank {other} compiled another plan than rank 0 ({len(a)} lines against {len(b)}); every "
            "rank must run the same plan")


class ShardedAdapter:
    """A model adapter whose forwards run on this rank's shard of the tokens: the embed keeps the
    shard of the hidden states and rotary tables, the blocks attend across shards through
    diffusers' context-parallel attention, the head gathers the shards back. The time signals
    (TeaCache's) are not sharded, so folding and run-time TeaCache see what one process sees."""

    def __init__(self, inner: Any, parallel: ParallelRun):
        self.inner = inner
        self.parallel = parallel

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "parallel"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def describe(self, latent_shape: tuple[int, ...], version: tuple | None = None) -> dict[str, Any]:
        out = self.inner.describe(latent_shape, version)
        batch, tokens, dim = out["residual_shape"]
        n = self.parallel.sequence
        if tokens % n:
            raise ValueError(f"sequence: the {tokens} tokens of this size do not split into {n} equal shards; choose "
                             f"a height, width or frame count whose patch count is a multiple of {n}")
        return {**out, "residual_shape": (batch, tokens // n, dim)}

    def embed(self, *args: Any) -> Any:
        ctx = self.inner.embed(*args)
        if ctx.e.ndim == 3:
            raise ValueError("sequence: a timestep per patch (expand_timesteps, Wan2.2 TI2V) is not sharded yet; "
                             "use cfg parallelism only for this model")
        split = self.parallel.split
        ctx.hidden = split(ctx.hidden)
        ctx.rotary = tuple(split(r) for r in ctx.rotary)
        return ctx

    def head(self, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        return self.inner.head(self.parallel.gather(hidden), ctx)

    def forward(self, latents, timestep, encoder_hidden_states, encoder_hidden_states_image=None):
        ctx = self.embed(latents, timestep, encoder_hidden_states, encoder_hidden_states_image)
        return self.head(self.run_blocks(0, self.num_blocks, ctx.hidden, ctx), ctx)


def shard_attention(transformer: torch.nn.Module, parallel: ParallelRun) -> None:
    """Turn on diffusers' Ulysses attention across the ranks of this CFG group, with no input or
    output hooks (`cp_plan={}`: the adapter splits and gathers, around the cells)."""
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    mesh = parallel.mesh
    config = ContextParallelConfig(ulysses_degree=parallel.sequence, mesh=mesh)
    if parallel.device.type != "cpu":
        transformer.enable_parallelism(config=config, cp_plan={})
        return
    # diffusers' enable_parallelism divides by the accelerator count (0 on a CPU build): set the
    # same resolved config on the attention processors here, as it would
    resolved = ParallelConfig(context_parallel_config=config)
    resolved.setup(parallel.rank, parallel.world, parallel.device, mesh=mesh)
    transformer._parallel_config = resolved
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = resolved


def setup(cfg: int = 1, sequence: int = 1, *, backend: str | None = None, timeout: float = 60.0) -> ParallelRun:
    """Join (or initialise) the process group and lay this rank out in it."""
    check_degrees(cfg, sequence)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"backend: expected None, 'gloo' or 'nccl', got {backend!r}")
    init_process_group(cfg * sequence, backend=backend, timeout=timeout)
    return ParallelRun(cfg, sequence, timeout=timeout)
