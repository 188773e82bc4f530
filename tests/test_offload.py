"""Offloading hooks on the transformer keep working although the runtime never calls its `forward`."""

from __future__ import annotations

import pytest
import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from conftest import components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline, tiny_components
from edit.cache import apply_cache_on_transformer, remove_cache_from_transformer

TEACACHE = dict(rel_l1_thresh=1.0, coefficients=[1.0, 0.0], use_ret_steps=False)  # a mix of computed and reused steps


class ParkingHook(ModelHook):
    """A stand-in offloader: the module's weights are on the meta device except between its
    pre_forward and post_forward, as with accelerate's offloading hooks."""

    def __init__(self):
        self.entered = 0
        self.execution_device = torch.device("cpu")  # what diffusers' `_execution_device` reads

    def init_hook(self, module):
        self.weights = [(mod, name, p) for mod in module.modules() for name, p in mod._parameters.items()
                        if p is not None]
        self.park(module)
        return module

    def park(self, module):
        for mod, name, p in self.weights:
            mod._parameters[name] = torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)

    def pre_forward(self, module, *args, **kwargs):
        self.entered += 1
        for mod, name, p in self.weights:
            mod._parameters[name] = p
        return args, kwargs

    def post_forward(self, module, output):
        self.park(module)
        return output


def parked(cls):
    """A pipeline of `cls` on fresh components whose transformer is parked by a ParkingHook."""
    comps = tiny_components(0)  # not the shared cached components: hooks mutate the module
    hook = ParkingHook()
    add_hook_to_module(comps["transformer"], hook)
    return cls(**comps), hook


def is_parked(module) -> bool:
    return all(p.device.type == "meta" for p in module.parameters())


@pytest.fixture(scope="module")
def reference():
    return generate(WanPipeline(**components()))


@pytest.fixture(scope="module")
def cached_reference():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", **TEACACHE)
    out = generate(pipe)
    assert set("".join(pipe.cache.stats.trace.values())) == {"C", "S"}
    return out


def test_the_stand_in_offloader_works_with_diffusers(reference):
    pipe, hook = parked(WanPipeline)
    assert is_parked(pipe.transformer)
    assert torch.equal(generate(pipe), reference)
    assert hook.entered == 2 * 3 and is_parked(pipe.transformer)  # one forward per step and branch


def test_edit_pipeline_runs_the_transformer_hooks(reference, cached_reference):
    pipe, hook = parked(EditWanPipeline)
    assert torch.equal(generate(pipe), reference)
    assert hook.entered == 1 and is_parked(pipe.transformer)  # the run stands in for the forwards
    pipe.enable_cache("teacache", **TEACACHE)  # folding evaluates the time embedding at compile time
    plan = pipe.compile(num_inference_steps=3, height=32, width=48, num_frames=9)
    assert is_parked(pipe.transformer)
    assert torch.equal(generate(pipe, plan=plan), cached_reference)
    assert torch.equal(generate(pipe), cached_reference)


def test_apply_cache_on_an_offloaded_transformer(reference, cached_reference):
    pipe, hook = parked(WanPipeline)
    apply_cache_on_transformer(pipe.transformer, "teacache", **TEACACHE)
    assert torch.equal(generate(pipe), cached_reference)
    assert hook.entered == 2 * 3 and is_parked(pipe.transformer)
    remove_cache_from_transformer(pipe.transformer)  # restores accelerate's wrapper, not the bare method
    assert torch.equal(generate(pipe), reference)
    assert hook.entered == 4 * 3


def test_model_cpu_offload(reference):
    pipe = EditWanPipeline(**tiny_components(0))
    pipe.enable_model_cpu_offload(device="cpu")  # the accelerate CpuOffload hooks, on this CPU
    hook = pipe.transformer._hf_hook
    calls = []
    original = hook.pre_forward
    hook.pre_forward = lambda module, *a, **k: (calls.append(module), original(module, *a, **k))[1]
    assert torch.equal(generate(pipe), reference)
    assert calls == [pipe.transformer]


def test_block_level_group_offload(reference):
    pipe = EditWanPipeline(**tiny_components(0))
    cpu = torch.device("cpu")
    pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                                          num_blocks_per_group=1)
    top = pipe.transformer._diffusers_hook.get_hook("group_offloading")
    onloads = []
    original = top.group.onload_
    top.group.onload_ = lambda: (onloads.append(1), original())[1]
    assert torch.equal(generate(pipe), reference)
    assert onloads  # the top-level group (embeddings, head) was brought in by the run


def test_lazy_prefetch_group_offload_is_refused():
    from diffusers.hooks import HookRegistry, ModelHook as DiffusersHook
    pipe = EditWanPipeline(**tiny_components(0))
    HookRegistry.check_if_exists_or_initialize(pipe.transformer).register_hook(
        DiffusersHook(), "lazy_prefetch_group_offloading")
    with pytest.raises(ValueError, match="transformer: group offloading"):
        generate(pipe)
