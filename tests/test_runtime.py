"""The runtime: Wan adapter pieces, program compilation, last-use frees and custom kernels."""

from __future__ import annotations

import attrs
import pytest
import torch
from conftest import SIZE, components, generate

from edit import EditWanPipeline
from edit.graph import Input, Node, Output, RunSpec, Unit, lower
from edit.runtime import WanAdapter, compile_program, register_kernel
from edit.runtime.executor import KERNELS


@pytest.mark.parametrize("two_d", [False, True], ids=["wan2.1-timestep", "wan2.2-per-token-timestep"])
def test_adapter_pieces_equal_one_forward(two_d):
    model = components(num_layers=3)["transformer"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 6, generator=gen)
    text = torch.randn(2, 20, 32, generator=gen)
    t = torch.tensor([900.0, 10.0])
    if two_d:
        t = t[:, None].expand(2, 3 * 2 * 3).clone()
        t[:, :3] = 0.0
    with torch.no_grad():
        ref = model(x, t, text, return_dict=False)[0]
        adapter = WanAdapter(model)
        ctx = adapter.embed(x, t, text)
        hidden = adapter.run_blocks(0, 1, ctx.hidden, ctx)
        hidden = adapter.run_blocks(1, 3, hidden, ctx)
        out = adapter.head(hidden, ctx)
    assert torch.equal(out, ref)


def test_adapter_rejects_other_modules_and_bad_latents():
    with pytest.raises(TypeError, match="transformer"):
        WanAdapter(torch.nn.Linear(2, 2))
    adapter = WanAdapter(components()["transformer"])
    with pytest.raises(ValueError, match="channels"):
        adapter.check_latents(torch.zeros(1, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="height 3"):
        adapter.check_latents(torch.zeros(1, 16, 3, 3, 4))


def test_program_frees_every_intermediate_after_its_last_use():
    graph = lower(RunSpec(num_steps=3, timesteps=(3.0, 2.0, 1.0), num_blocks=4, granularity="per_block"))
    program = compile_program(graph)
    freed_at = {}
    for pos, ins in enumerate(program.instrs):
        for slot in ins.free:
            assert slot not in freed_at, "a slot is freed twice"
            freed_at[slot] = pos
    for pos, ins in enumerate(program.instrs):
        uses = [p for p, other in enumerate(program.instrs) if any(s == ins.out for _, s, _ in other.args)]
        if ins.out == program.output_slot:
            assert ins.out not in freed_at
        else:
            assert freed_at[ins.out] == max(uses), ins.node.name
    # at most a handful of values are alive at once, however long the run
    live, peak = set(), 0
    for ins in program.instrs:
        live.add(ins.out)
        peak = max(peak, len(live))
        live -= set(ins.free)
    assert peak <= 8


def test_custom_node_kind_runs_through_its_registered_kernel():
    @attrs.frozen
    class Scale(Node):
        inputs = ("hidden",)
        step: int
        branch: str
        unit: int = 1
        factor: float = 0.5

        @property
        def name(self):
            return f"s{self.step}.{self.branch}.scale"

    calls = []

    @register_kernel(Scale)
    def run_scale(state, node, hidden):
        calls.append(node.step)
        return hidden * node.factor

    try:
        pipe = EditWanPipeline(**components())
        plan = pipe.compile(num_inference_steps=3, guidance_scale=5.0, **SIZE)
        unit = plan.find(Unit, step=1, branch="cond")[0]
        head = plan.consumers(unit)[0]
        plan.remove_edge(unit, head)
        scale = plan.add_node(Scale(1, "cond"))
        plan.add_edge(unit, scale, port="hidden")
        plan.add_edge(scale, head, port="hidden")
        edited = generate(pipe, plan=plan)
        assert calls == [1]
        assert not torch.equal(edited, generate(pipe))
    finally:
        KERNELS.pop(Scale, None)


def test_missing_kernel_and_plan_mismatch_are_clear_errors():
    @attrs.frozen
    class Orphan(Node):
        @property
        def name(self):
            return "orphan"

    graph = lower(RunSpec(num_steps=1, timesteps=(1.0,), num_blocks=4))
    graph.add_node(Orphan())
    with pytest.raises(ValueError, match="no kernel registered for node kind Orphan"):
        compile_program(graph)
    pipe = EditWanPipeline(**components())
    plan = pipe.compile(num_inference_steps=2, guidance_scale=5.0, **SIZE)
    with pytest.raises(ValueError, match="plan: num_steps: the plan was compiled for 2, this call has 3"):
        generate(pipe, plan=plan, num_inference_steps=3)
    with pytest.raises(ValueError, match="plan: latent_shape"):
        generate(pipe, plan=plan, num_inference_steps=2, height=64)
    with pytest.raises(TypeError, match="plan"):
        generate(pipe, plan="not a graph")


def test_replaying_a_compiled_plan_equals_the_default_run():
    pipe = EditWanPipeline(**components())
    plan = pipe.compile(num_inference_steps=3, guidance_scale=5.0, **SIZE)
    assert torch.equal(generate(pipe, plan=plan), generate(pipe))
    assert len(plan.find(Input)) == 3 and len(plan.find(Output)) == 1
