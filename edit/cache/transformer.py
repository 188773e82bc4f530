"""`apply_cache_on_transformer`: the same caching for a plain diffusers `WanPipeline`.

The transformer's `forward` is replaced (an instance attribute, so removal restores the class's
method exactly) by one that runs the matching (step, branch) slice of the cached plan. The step
and the CFG branch come from diffusers' `cache_context("cond"/"uncond", step_index=...)`.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch

from edit.graph import Embed, Head, RunSpec, check_granularity
from edit.passes import make_policy
from edit.passes.compiler import CacheSettings, ModelInfo, compile_plan
from edit.runtime import RunState, WanAdapter, compile_program
from edit.runtime.cache import CacheController
from edit.runtime.offload import execution_device, forward_hooks

_PATCHED = ("forward", "cache_context", "_edit_cache", "_edit_saved")


class _TransformerCache:
    """Per-transformer plan slices, compiled once per step count."""

    def __init__(self, transformer: torch.nn.Module, controller: CacheController, options: dict[str, Any]):
        self.adapter = WanAdapter(transformer)
        self.controller = controller
        self.options = options
        self.num_inference_steps: int | None = None
        self.program = None
        self.slices: dict[tuple[int, str], tuple] = {}
        self.context: dict[str, Any] = {}
        self.calls = 0

    def prepare(self, num_steps: int) -> None:
        if self.program is not None and self.program.graph.spec.num_steps == num_steps:
            return
        adapter = self.adapter
        spec = RunSpec(num_steps=num_steps, timesteps=range(num_steps, 0, -1), num_blocks=adapter.num_blocks,
                       generation=self.controller.generation, model=adapter.model_id)
        # The compiler EditWanPipeline calls; the timesteps are unknown ahead of the run here, so
        # nothing is folded and every cell is decided at run time (with the decisions a folded
        # plan has).
        info = ModelInfo(adapter.model_id, adapter.num_blocks, {"model": type(adapter.model).__name__})
        settings = CacheSettings(self.controller.policy, fold=False, **self.options)
        plan, _ = compile_plan(spec, info, settings, self.controller.costs)
        self.program = compile_program(plan, check=False)
        self.slices = {}
        for ins in self.program.instrs:
            step, branch = getattr(ins.node, "step", None), getattr(ins.node, "branch", None)
            if branch is not None:
                entry = self.slices.setdefault((step, branch), [[], None, None])
                entry[0].append(ins)
                if isinstance(ins.node, Embed):
                    entry[1] = dict((port, slot) for port, slot, _ in ins.args)
                if isinstance(ins.node, Head):
                    entry[2] = ins.out

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, return_dict: bool = True,
                attention_kwargs: dict | None = None):
        if encoder_hidden_states_image is not None:
            raise ValueError("encoder_hidden_states_image: image conditioning (Wan I2V) is not supported by "
                             "apply_cache_on_transformer")
        ctx = self.context
        num_steps = ctx.get("num_inference_steps") or self.num_inference_steps
        if not num_steps:
            raise ValueError("num_inference_steps: unknown; pass it to apply_cache_on_transformer or call the "
                             "transformer inside cache_context(..., num_inference_steps=N)")
        branch = ctx.get("name") or "cond"
        step = ctx.get("step_index")
        if step is None:  # called outside a cache context: count calls
            step, self.calls = self.calls % num_steps, self.calls + 1
        if self.num_inference_steps not in (None, num_steps):
            raise ValueError(f"num_inference_steps: the cache was applied for {self.num_inference_steps} "
                             f"steps, the pipeline runs {num_steps}")
        self.prepare(num_steps)
        if step == 0 and branch == "cond":
            self.controller.begin_run(num_steps, self.program.num_units)
        if (step, branch) not in self.slices:
            raise ValueError(f"cache_context: unknown branch {branch!r}; expected 'cond' or 'uncond'")
        instrs, entry, exit_slot = self.slices[(step, branch)]
        # no branch contexts: diffusers' pipeline already runs this forward inside one
        state = RunState(adapter=self.adapter, scheduler=None, timesteps=None, inputs={}, cache=self.controller,
                         timestep_override=timestep, branch_contexts=False)
        slots: list[Any] = [None] * self.program.num_slots
        slots[entry["latents"]], slots[entry["text"]] = hidden_states, encoder_hidden_states
        self.program.execute(state, tuple(instrs), slots)
        if step == num_steps - 1:
            self.controller.end_run()
        output = slots[exit_slot]
        if not return_dict:
            return (output,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput  # diffusers is loaded by now
        return Transformer2DModelOutput(sample=output)


def apply_cache_on_transformer(transformer: torch.nn.Module, policy: Any = "teacache", *,
                               num_inference_steps: int | None = None, granularity: str | int = "stack",
                               store: Any = None, passes: Any = (), prefetch: int | None = None,
                               **policy_kwargs: Any) -> CacheController:
    """Cache a diffusers `WanTransformer3DModel` in place; returns its controller (stats, hooks).

    The plan comes from the same `edit.passes.default_pipeline` as `EditWanPipeline`'s (with the
    same `granularity`, `passes` and `prefetch`); decisions are made at run time (they equal the
    folded ones of `EditWanPipeline`).
    """
    from edit.checks import check_int

    adapter = WanAdapter(transformer)
    if hasattr(transformer, "_edit_cache"):
        remove_cache_from_transformer(transformer)
    policy = make_policy(policy, **policy_kwargs)
    check_granularity(granularity, adapter.num_blocks)
    if num_inference_steps is not None:
        check_int(num_inference_steps, "num_inference_steps", what=" or None")
    if store is None:
        from edit.runtime.store import GPUStore
        store = GPUStore(device=execution_device(transformer))
    controller = CacheController(policy, store=store)
    cache = _TransformerCache(transformer, controller, dict(granularity=granularity, passes=tuple(passes),
                                                            prefetch=prefetch))
    cache.num_inference_steps = num_inference_steps
    original_context = transformer.cache_context

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs: Any):
        cache.context = {"name": name, **kwargs}
        try:
            with original_context(name, **kwargs):
                yield
        finally:
            cache.context = {}

    def forward(self, *args: Any, **kwargs: Any):
        with torch.no_grad(), forward_hooks(self):
            return cache.forward(*args, **kwargs)

    # An offloader may have wrapped `forward` as an instance attribute already: keep it for removal.
    transformer._edit_saved = {name: transformer.__dict__[name] for name in ("forward", "cache_context")
                               if name in transformer.__dict__}
    transformer.forward = types.MethodType(forward, transformer)
    transformer.cache_context = types.MethodType(cache_context, transformer)
    transformer._edit_cache = controller
    return controller


def remove_cache_from_transformer(transformer: torch.nn.Module) -> None:
    """Undo `apply_cache_on_transformer`: the `forward` it replaced (the class's own, or an offloader's
    wrapper installed before) is used again."""
    controller = transformer.__dict__.get("_edit_cache")
    if controller is None:
        raise ValueError("transformer: no cache applied (apply_cache_on_transformer was not called on it)")
    if controller.store is not None:
        controller.residuals.clear()
    saved = transformer.__dict__.get("_edit_saved", {})
    for name in _PATCHED:
        transformer.__dict__.pop(name, None)
    transformer.__dict__.update(saved)
