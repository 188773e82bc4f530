"""Kernels of the built-in node kinds: what each node does when the program runs."""

from __future__ import annotations

import time

import attrs
import torch

from edit.graph import COMPUTE, DECIDE, Cell, Embed, Exchange, Guide, Head, Input, Output, Prefetch, Probe, Unit, Update
from edit.runtime.executor import register_kernel
from edit.runtime.state import RunState


@register_kernel(Input)
def run_input(state: RunState, node: Input):
    return state.inputs[node.value]


@register_kernel(Embed)
def run_embed(state: RunState, node: Embed, latents: torch.Tensor, text: torch.Tensor,
              condition: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              image: torch.Tensor | None = None):
    """The model input as diffusers' Wan pipelines build it: the latents (text to video), the
    condition video joined on channels (image to video), or the first latent frame replaced by
    the condition (`mask`: Wan2.2 TI2V); then the embed."""
    state.begin_step(node.step)
    adapter = state.adapter_for(node.model)
    if mask is not None:
        model_input = (1 - mask) * condition + mask * latents
    elif condition is not None:
        model_input = torch.cat([latents, condition], dim=1)
    else:
        model_input = latents
    timestep = state.timestep(node.step, latents, mask)
    if image is None:  # an adapter of a model without image conditioning need not take the argument
        return adapter.embed(model_input.to(adapter.dtype), timestep, text)
    return adapter.embed(model_input.to(adapter.dtype), timestep, text, image)


@register_kernel(Unit)
def run_unit(state: RunState, node: Unit, hidden: torch.Tensor, ctx) -> torch.Tensor:
    return state.adapter_for(node.model).run_blocks(node.blocks[0], node.blocks[1], hidden, ctx)


@register_kernel(Head)
def run_head(state: RunState, node: Head, hidden: torch.Tensor, ctx) -> torch.Tensor:
    return state.adapter_for(node.model).head(hidden, ctx)


@register_kernel(Guide)
def run_guide(state: RunState, node: Guide, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    return uncond + node.scale * (cond - uncond)


@register_kernel(Exchange)
def run_exchange(state: RunState, node: Exchange, cond: torch.Tensor | None = None,
                 uncond: torch.Tensor | None = None):
    """Both branches' predictions on every rank: this rank computed its CFG group's branch only."""
    if state.parallel is None:
        raise ValueError(f"%{node.name}: this plan is placed over ranks (place(cfg=2)); run it under "
                         "pipe.enable_parallelism(cfg=2) in every process")
    return state.parallel.exchange(node, {"cond": cond, "uncond": uncond})


@register_kernel(Update)
def run_update(state: RunState, node: Update, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    return state.scheduler.step(noise, state.timesteps[node.step], latents, return_dict=False)[0]


@register_kernel(Output)
def run_output(state: RunState, node: Output, latents: torch.Tensor) -> torch.Tensor:
    return latents


@attrs.frozen(eq=False)
class ProbeOutput:
    """Block 0's output and residual (out0 - x): First-Block-Cache's probe signal."""

    hidden: torch.Tensor
    residual: torch.Tensor


@register_kernel(Probe)
def run_probe(state: RunState, node: Probe, hidden: torch.Tensor, ctx) -> ProbeOutput:
    return ProbeOutput(*_blocks_residual(state.adapter_for(node.model), node.blocks, hidden, ctx))


def _blocks_residual(adapter, blocks: tuple[int, int], hidden: torch.Tensor, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks' output, output - hidden): one compiled region where the adapter has it."""
    fused = getattr(adapter, "run_blocks_residual", None)
    if fused is not None:
        return fused(blocks[0], blocks[1], hidden, ctx)
    out = adapter.run_blocks(blocks[0], blocks[1], hidden, ctx)
    return out, out - hidden


@register_kernel(Prefetch)
def run_prefetch(state: RunState, node: Prefetch) -> None:
    prefetch = getattr(state.cache_for(node).residuals, "prefetch", None)
    if prefetch is not None:  # a store with only put/get has nothing to stage
        prefetch(node.key)


def _load(cache, keys: list[tuple], hidden: torch.Tensor) -> torch.Tensor | None:
    """The residual to add: the one stored under the key, or the mean of those a window's keys
    still hold; None when there is none. Time blocked here is the stall a prefetch hides."""
    start = time.perf_counter()
    found = []
    for key in keys:
        value = cache.residuals.get(key)
        if value is not None and value.shape == hidden.shape:
            found.append(value.to(hidden.device))
    cache.stats.get_seconds += time.perf_counter() - start
    cache.stats.gets += len(keys)
    if not found:
        return None
    if len(keys) == 1:
        return found[0]
    return torch.stack(found).mean(dim=0)


@register_kernel(Cell)
def run_cell(state: RunState, node: Cell, hidden: torch.Tensor, ctx, probe: torch.Tensor | None = None):
    """The cell region: decide (or take the static path), then compute + save, or load + add
    (recomputing on a store miss). Stats and hooks see every cell, folded or not."""
    cache = state.cache_for(node)
    adapter = state.adapter_for(node.model)
    hooks = cache.hooks
    context = None
    if node.mode == DECIDE or node.consult or hooks["before_unit"]:
        context = cache.context(node, hidden=hidden, signals=adapter.signals(ctx), probe=probe)
        if hooks["before_unit"]:
            cache.fire("before_unit", node, hidden=hidden, ctx=context)
    if node.mode == DECIDE or node.consult:
        compute = cache.decide(node, context)
    else:
        compute = node.mode == COMPUTE
    store = cache.residuals
    fx = state.effects.get(node)
    if fx is None:  # keys derived without the plan would lack its timesteps and latent shape
        raise ValueError(f"%{node.name}: run it through its Program (compile_program), which knows the keys it "
                         "reads and writes")
    if compute:
        out, residual = _blocks_residual(adapter, node.blocks, hidden, ctx)
        saves = fx.compute_writes
    else:
        residual = _load(cache, fx.reads, hidden)
        if residual is None:
            # a miss (evicted, corrupted, another shape or timestep; nothing kept by the window):
            # recompute, so the unit is still exact
            out, residual = _blocks_residual(adapter, node.blocks, hidden, ctx)
            saves = fx.miss_writes
            cache.stats.recomputed += 1
            cache.stats.recomputed_cells.append(node.cell)
        else:
            add = getattr(adapter, "add_residual", None)
            out = hidden + residual if add is None else add(hidden, residual)
            saves = fx.reuse_writes
    for key in saves:
        store.put(key, residual)
    del residual
    cache.stats.record(node.branch, node.unit, compute, model=node.model)
    if hooks["after_unit"]:
        replaced = cache.fire("after_unit", node, output=out, compute=compute, ctx=context)
        if replaced is not None:
            out = replaced
    return out
