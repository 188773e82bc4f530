"""`RunState`: the environment the kernels of one run execute in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs
import torch

from edit.graph import DEFAULT_MODEL
from edit.runtime.adapter import ModelAdapter


@attrs.define(eq=False)
class StepEnd:
    """What a step-end callback may change: the latents, run inputs (e.g. `text.cond`), or stop."""

    latents: torch.Tensor | None = None
    inputs: dict[str, Any] = attrs.Factory(dict)
    stop: bool = False


@attrs.define(eq=False)
class RunState:
    """Model adapter, scheduler, timesteps and run inputs, plus the per-step callbacks.

    `step_begin(step)` runs before the first node of a step; `step_end(step, latents)` after its
    scheduler update and may return a `StepEnd`.
    """

    adapter: ModelAdapter  # the adapter of the spec's model id (its `model_id`, default "transformer")
    scheduler: Any
    timesteps: torch.Tensor
    inputs: dict[str, Any]
    expand_timesteps: bool = False
    hooks: Any = None
    cache: Any = None  # a CacheController when the plan has cache nodes
    timestep_override: torch.Tensor | None = None  # the model input as given (patched transformer)
    step_begin: Callable[[int], None] | None = None
    step_end: Callable[[int, torch.Tensor], StepEnd | None] | None = None
    current_step: int = -1
    adapters: dict[str, Any] = attrs.Factory(dict)  # other model ids -> their adapters
    branch_contexts: bool = True  # run each branch inside the model's cache context (diffusers' hooks)
    effects: dict[Any, Any] = attrs.Factory(dict)  # set by the program: cell -> the keys it reads and writes
    parallel: Any = None  # a `ParallelRun` when the run spans several ranks (its Exchange nodes' collectives)

    def adapter_for(self, model: str) -> Any:
        if model == getattr(self.adapter, "model_id", DEFAULT_MODEL):
            return self.adapter
        try:
            return self.adapters[model]
        except KeyError:
            raise ValueError(f"model: no adapter for model id {model!r} in this run "
                             f"(known: {[getattr(self.adapter, 'model_id', DEFAULT_MODEL), *self.adapters]})") from None

    def cache_for(self, node: Any) -> Any:
        if self.cache is None:
            raise ValueError(f"%{node.name}: this plan has cache cells; enable a cache (pipe.enable_cache) to run it")
        return self.cache

    def enter_context(self, step: int, branch: str, model: str | None = None):
        """The cache context one (step, branch) forward of `model` (default: the run's) runs in
        (diffusers' `cache_context`), given by that model's adapter."""
        if not self.branch_contexts or self.timesteps is None:
            return contextlib.nullcontext()
        info = {"step_index": step, "num_inference_steps": len(self.timesteps)}
        sigmas = getattr(self.scheduler, "sigmas", None)
        if sigmas is not None and step < len(sigmas):
            info["sigma"] = float(sigmas[step])
        adapter = self.adapter if model is None or self.adapters == {} else self.adapter_for(model)
        return adapter.branch_context(branch, **info)

    def begin_step(self, step: int) -> None:
        if step != self.current_step:
            self.current_step = step
            if self.step_begin is not None:
                self.step_begin(step)

    def timestep(self, step: int, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's timestep input for `step`, built exactly as diffusers' loops build it. With
        `expand_timesteps` (Wan2.2 TI2V) one per latent patch: `t` times `mask` (image to video: 0
        on the first frame, whose patches are the given image), or `t` on every patch."""
        if self.timestep_override is not None:
            return self.timestep_override
        t = self.timesteps[step]
        if self.expand_timesteps:
            if mask is None:
                mask = torch.ones(latents.shape, dtype=torch.float32, device=latents.device)
            return (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(latents.shape[0], -1)
        return t.expand(latents.shape[0])

    def after_update(self, step: int, out_slot: int, slots: list[Any], program: Any) -> bool:
        """Apply the step-end callback's edits to the live slots; True stops the run."""
        if self.step_end is None:
            return False
        result = self.step_end(step, slots[out_slot])
        if result is None:
            return False
        if result.latents is not None:
            slots[out_slot] = result.latents
        for name, value in result.inputs.items():
            self.inputs[name] = value
            slot = program.input_slots.get(name)
            if slot is not None and slots[slot] is not None:
                slots[slot] = value
        return result.stop
