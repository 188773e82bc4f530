"""Kernels of the built-in node kinds: what each node does when the program runs."""

from __future__ import annotations

import attrs
import torch

from edit.graph import Decide, Embed, Guide, Head, Input, Load, Merge, Output, Prefetch, Probe, Reuse, Save, Unit, Update
from edit.runtime.executor import register_kernel
from edit.runtime.state import RunState
from edit.runtime.wan import EmbedOutput


@register_kernel(Input)
def run_input(state: RunState, node: Input):
    return state.inputs[node.value]


@register_kernel(Embed)
def run_embed(state: RunState, node: Embed, latents: torch.Tensor, text: torch.Tensor) -> EmbedOutput:
    state.begin_step(node.step)
    return state.adapter.embed(latents.to(state.adapter.dtype), state.timestep(node.step, latents), text)


@register_kernel(Unit)
def run_unit(state: RunState, node: Unit, hidden: torch.Tensor, ctx: EmbedOutput) -> torch.Tensor:
    return state.adapter.run_blocks(node.blocks[0], node.blocks[1], hidden, ctx)


@register_kernel(Head)
def run_head(state: RunState, node: Head, hidden: torch.Tensor, ctx: EmbedOutput) -> torch.Tensor:
    return state.adapter.head(hidden, ctx)


@register_kernel(Guide)
def run_guide(state: RunState, node: Guide, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    return uncond + node.scale * (cond - uncond)


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


def _cache(state: RunState, node):
    if state.cache is None:
        raise ValueError(f"%{node.name}: this plan has cache nodes; enable a cache (pipe.enable_cache) to run it")
    return state.cache


@register_kernel(Probe)
def run_probe(state: RunState, node: Probe, hidden: torch.Tensor, ctx: EmbedOutput) -> ProbeOutput:
    out = state.adapter.run_blocks(node.blocks[0], node.blocks[1], hidden, ctx)
    return ProbeOutput(out, out - hidden)


@register_kernel(Decide)
def run_decide(state: RunState, node: Decide, hidden: torch.Tensor, ctx: EmbedOutput,
               probe: torch.Tensor | None = None) -> bool:
    return _cache(state, node).decide(node, hidden, ctx, probe)


@register_kernel(Save)
def run_save(state: RunState, node: Save, input: torch.Tensor, output: torch.Tensor) -> None:
    _cache(state, node).store.put(node.key, output - input)


@register_kernel(Prefetch)
def run_prefetch(state: RunState, node: Prefetch) -> None:
    prefetch = getattr(_cache(state, node).store, "prefetch", None)
    if prefetch is not None:  # a store with only put/get has nothing to stage
        prefetch(node.key)


@register_kernel(Load)
def run_load(state: RunState, node: Load) -> torch.Tensor | None:
    return _cache(state, node).store.get(node.key)


@register_kernel(Reuse)
def run_reuse(state: RunState, node: Reuse, hidden: torch.Tensor, residual: torch.Tensor | None,
              ctx: EmbedOutput) -> torch.Tensor:
    cache = _cache(state, node)
    if residual is None or residual.shape != hidden.shape:
        # a miss (evicted, corrupted, other shape): recompute, so the unit is still exact
        out = state.adapter.run_blocks(node.blocks[0], node.blocks[1], hidden, ctx)
        cache.store.put(node.key, out - hidden)
        cache.stats.recomputed += 1
        return out
    return hidden + residual.to(hidden.device)


@register_kernel(Merge)
def run_merge(state: RunState, node: Merge, computed: torch.Tensor | None = None,
              reused: torch.Tensor | None = None) -> torch.Tensor:
    cache = _cache(state, node)
    out = computed if computed is not None else reused
    cache.stats.record(node.branch, node.unit, computed is not None)
    if cache.hooks["after_unit"]:
        replaced = cache.fire("after_unit", node, output=out, compute=computed is not None)
        if replaced is not None:
            out = replaced
    return out
