"""Kernels of the built-in node kinds: what each node does when the program runs."""

from __future__ import annotations

import torch

from edit.graph import Embed, Guide, Head, Input, Output, Unit, Update
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
