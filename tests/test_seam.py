"""The model-neutral seam: a small non-Wan block stack, defined here, runs the whole chain —
lower, policy, fold, save, load, run — through the same compiler and runtime as Wan."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import attrs
import pytest
import torch

from edit.cache import CachePolicy, GPUStore, register_policy, relative_l1
from edit.graph import Cell, Plan, RunSpec
from edit.passes import make_policy
from edit.passes.compiler import CacheSettings, ModelInfo, compile_plan
from edit.runtime import RunState, compile_program
from edit.runtime.cache import CacheController

TIMESTEPS = [1000.0, 950.0, 900.0, 860.0, 500.0, 100.0]
SHAPE = (1, 5, 8)  # batch, tokens, width


@attrs.define(eq=False)
class ToyContext:
    hidden: torch.Tensor
    temb: torch.Tensor


class ToyAdapter:
    """Three residual MLP blocks over (batch, tokens, 8), conditioned on a time embedding."""

    model_id = "toy"
    num_blocks = 3
    dtype = torch.float32

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.blocks = [torch.randn(8, 8, generator=gen) * 0.3 for _ in range(3)]
        self.time = torch.randn(8, generator=gen)

    def _temb(self, timestep: torch.Tensor) -> torch.Tensor:
        return torch.sin(timestep.float()[:, None] / 300.0 * self.time)

    def embed(self, latents, timestep, text):
        return ToyContext(latents + text.mean(dim=1, keepdim=True), self._temb(timestep))

    def run_blocks(self, start, stop, hidden, ctx):
        for w in self.blocks[start:stop]:
            hidden = hidden + torch.tanh(hidden @ w) * ctx.temb[:, None, :]
        return hidden

    def head(self, hidden, ctx):
        return hidden * 0.5

    def signals(self, ctx):
        return {"temb": ctx.temb}

    def time_signals(self, timestep, dtype):
        return {"temb": self._temb(timestep)}

    def branch_context(self, branch, **info):
        return contextlib.nullcontext()

    def describe(self, latent_shape):
        return {"fingerprint": {"model": "ToyStack:3x8", "weights": "seed0", "dtype": "torch.float32"},
                "residual_shape": tuple(latent_shape)}


class ToyScheduler:
    def step(self, noise, t, latents, return_dict=False):
        return (latents - 0.2 * noise,)


@register_policy("temb_drift")
class TembDrift(CachePolicy):
    """Skips while the time embedding's accumulated relative change stays under `thresh`: a static
    policy over a signal only this model's adapter names."""

    static_signal = True

    def __init__(self, *, thresh: float = 0.1):
        self.thresh = thresh

    def reset(self, state):
        state.user.update(acc=0.0, prev=None)

    def should_compute(self, ctx):
        s = ctx.state.user
        signal, prev = ctx.signals["temb"], s["prev"]
        s["prev"] = signal
        if prev is None:
            return True
        s["acc"] += relative_l1(signal, prev)
        if s["acc"] < self.thresh:
            return False
        s["acc"] = 0.0
        return True


def toy_info(adapter):
    described = adapter.describe(SHAPE)
    return ModelInfo("toy", 3, described["fingerprint"], described["residual_shape"],
                     lambda step: adapter.time_signals(torch.tensor([TIMESTEPS[step]]), adapter.dtype))


def compile_toy(adapter, settings=None):
    spec = RunSpec(num_steps=len(TIMESTEPS), timesteps=TIMESTEPS, num_blocks=3, branches=("cond",),
                   guidance_scale=1.0, model="toy", latent_shape=SHAPE)
    plan, _ = compile_plan(spec, toy_info(adapter), settings, extra={"scheduler": "toy", "latent_shape": SHAPE})
    return plan


def run_toy(adapter, plan, policy=None):
    gen = torch.Generator().manual_seed(1)
    inputs = {"latents": torch.randn(SHAPE, generator=gen), "text.cond": torch.randn(1, 3, 8, generator=gen)}
    program = compile_program(plan)
    cache = CacheController(policy, store=GPUStore()) if program.has_cells else None
    if cache is not None:
        cache.begin_run(len(TIMESTEPS), program.num_units)
    state = RunState(adapter=adapter, scheduler=ToyScheduler(), timesteps=torch.tensor(TIMESTEPS), inputs=inputs,
                     cache=cache)
    return program.run(state), cache


def manual_loop(adapter):
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(SHAPE, generator=gen), torch.randn(1, 3, 8, generator=gen)
    for t in TIMESTEPS:
        ctx = adapter.embed(x, torch.tensor([t]).expand(1), text)
        x = ToyScheduler().step(adapter.head(adapter.run_blocks(0, 3, ctx.hidden, ctx), ctx), t, x)[0]
    return x


def test_a_non_wan_block_stack_runs_the_whole_chain(tmp_path):
    adapter = ToyAdapter()
    plain, _ = run_toy(adapter, compile_toy(adapter))
    assert torch.equal(plain, manual_loop(adapter))  # no cache: exactly the model's own loop

    settings = CacheSettings(make_policy("temb_drift", thresh=0.3), granularity="per_block")
    plan = compile_toy(adapter, settings)
    assert "apply_policy(policy=temb_drift(thresh=0.3))" in plan.pipeline and "fold_static" in plan.pipeline
    assert {c.mode for c in plan.nodes(Cell)} == {"compute", "reuse"} and all(c.model == "toy" for c in plan.nodes(Cell))
    plan.save(tmp_path / "toy.json")
    loaded = Plan.load(tmp_path / "toy.json")
    assert loaded.to_text() == plan.to_text() and loaded.fingerprint["model"] == "ToyStack:3x8"
    folded, cache = run_toy(adapter, loaded, make_policy("temb_drift", thresh=0.3))
    assert "S" in "".join(cache.stats.trace.values()) and not torch.equal(folded, plain)

    # the same policy decided at run time: the same decisions, the same output
    dynamic_plan = compile_toy(adapter, attrs.evolve(settings, fold=False))
    assert {c.mode for c in dynamic_plan.nodes(Cell) if c.step > 0} == {"decide"}
    dynamic, dyn_cache = run_toy(adapter, dynamic_plan, make_policy("temb_drift", thresh=0.3))
    assert dyn_cache.stats.trace == cache.stats.trace and torch.equal(dynamic, folded)
    assert set(dyn_cache.states) == {("toy", "cond", u) for u in range(3)}  # keyed by (model, branch, unit)
    assert dyn_cache.residuals.keys() and all(k[0] == "toy" for k in dyn_cache.residuals.keys())  # (model, ...)


def test_the_ir_and_passes_name_no_wan_field():
    root = Path(__file__).resolve().parent.parent
    wan = re.compile(r"\b(e0|encoder_hidden|rotary|temb|timestep_proj|WanTransformer3DModel)\b")
    # TeaCache (passes/policies.py) is Wan's policy; CacheContext keeps ctx.e0/ctx.e/ctx.encoder_hidden
    # as documented aliases of Wan's signals (passes/policy.py)
    allowed = {"policies.py", "policy.py"}
    offenders = [f"{path.relative_to(root)}:{n}" for folder in ("graph", "passes") for path in (root / folder).glob("*.py")
                 if path.name not in allowed for n, line in enumerate(path.read_text().splitlines(), 1)
                 if wan.search(line)]
    assert offenders == []


def test_a_plan_for_another_model_id_is_refused():
    adapter = ToyAdapter()
    plan = compile_toy(adapter)
    spec = plan.spec
    with pytest.raises(ValueError, match="num_blocks 3 differs from the model's 4"):
        compile_plan(spec, attrs.evolve(toy_info(adapter), num_blocks=4))


def test_two_models_in_one_run_keep_their_own_cells_states_and_keys():
    """Which model runs each step is the spec's (`step_models`, filled by the caller from its
    adapters): records, residual keys, policy states and traces are each model's own, and no
    residual is read across the switch (each model's first step computes)."""
    first, second = ToyAdapter(), ToyAdapter()
    second.model_id = "toy2"
    second.blocks = [w.flip(0) for w in second.blocks]  # another expert
    steps = ("toy",) * 3 + ("toy2",) * 3
    spec = RunSpec(num_steps=len(TIMESTEPS), timesteps=TIMESTEPS, num_blocks=3, branches=("cond",),
                   guidance_scale=1.0, model="toy", latent_shape=SHAPE, step_models=steps)
    experts = {"toy": first, "toy2": second}
    info = ModelInfo("toy", 3, {"model": "two toys", "weights": "seed0", "dtype": "torch.float32"}, SHAPE,
                     lambda step: experts[steps[step]].time_signals(torch.tensor([TIMESTEPS[step]]), torch.float32))
    policy = make_policy("temb_drift", thresh=10.0)  # skip whatever can be skipped
    plan, _ = compile_plan(spec, info, CacheSettings(policy, granularity="per_block"),
                           extra={"scheduler": "toy", "latent_shape": SHAPE})
    assert plan.fingerprint["models"] == ("toy", "toy2")
    assert {c.model for c in plan.nodes(Cell) if c.step >= 3} == {"toy2"}
    assert all(plan.cell_at(s, "cond", u).mode == "compute" for s in (0, 3) for u in range(3))  # each model's first
    assert plan.cell_at(4, "cond", 0).mode == "reuse" and plan.latest_writer(plan.cell_at(4, "cond", 0)).step == 3
    gen = torch.Generator().manual_seed(1)
    inputs = {"latents": torch.randn(SHAPE, generator=gen), "text.cond": torch.randn(1, 3, 8, generator=gen)}
    program = compile_program(plan)
    cache = CacheController(make_policy("temb_drift", thresh=10.0), store=GPUStore())
    cache.begin_run(len(TIMESTEPS), program.num_units)
    state = RunState(adapter=first, adapters={"toy2": second}, scheduler=ToyScheduler(),
                     timesteps=torch.tensor(TIMESTEPS), inputs=inputs, cache=cache)
    program.run(state)
    assert set(cache.stats.traces) == {(m, "cond", u) for m in ("toy", "toy2") for u in range(3)}
    assert cache.stats.traces[("toy2", "cond", 0)] == "CSS" and set(cache.stats.trace) == set(cache.stats.traces)
    assert {k[0] for k in cache.residuals.keys()} == {"toy", "toy2"}
    with pytest.raises(ValueError, match="step_models: expected"):
        attrs.evolve(spec, step_models=("toy",) * 5)
