"""Wan2.2 A14B text-to-video: two experts, each its own model in the plan and the cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline
from edit.graph import Cell, Guide


def two_experts(boundary_ratio=0.875, **overrides) -> dict:
    """Tiny components with a second expert of other weights (seed 1) below `boundary_ratio`."""
    comps = components(**overrides)
    comps["transformer_2"] = components(seed=1, **overrides)["transformer"]
    comps["boundary_ratio"] = boundary_ratio
    return comps


def timesteps(steps: int) -> list[float]:
    pipe = EditWanPipeline(**components())
    return [float(t) for t in pipe._timesteps(steps, "cpu")]


# 0.875 switches experts inside the tiny scheduler's 6 steps (after the second); 0.0 keeps every step
# on the first expert; 1.0 hands every step to the second
@pytest.mark.parametrize("boundary, guidance_2", [(0.875, None), (0.875, 3.0), (0.0, None), (1.0, 3.0)],
                         ids=["inside", "inside-guidance-2", "all-first", "all-second-guidance-2"])
def test_two_experts_equal_diffusers(boundary, guidance_2):
    comps = two_experts(boundary)
    kwargs = dict(num_inference_steps=6, guidance_scale_2=guidance_2)
    ref = generate(WanPipeline(**comps), **kwargs)
    out = generate(EditWanPipeline(**comps), **kwargs)
    assert torch.equal(out, ref)


def test_the_boundary_case_is_real():
    """The parity above compares runs in which the second expert matters: swapping it changes the
    output, and the plan names the expert of every step and its guidance."""
    comps = two_experts(0.875)
    ts = timesteps(6)
    switch = sum(t >= 0.875 * 1000 for t in ts)
    assert 0 < switch < 6
    out = generate(EditWanPipeline(**comps), num_inference_steps=6)
    single = generate(EditWanPipeline(**components()), num_inference_steps=6)
    assert not torch.equal(out, single)
    plan = EditWanPipeline(**comps).compile(6, 5.0, guidance_scale_2=2.0, height=32, width=48, num_frames=9)
    assert plan.spec.step_models == ("transformer",) * switch + ("transformer_2",) * (6 - switch)
    assert [g.scale for g in sorted(plan.nodes(Guide), key=lambda g: g.step)] == [5.0] * switch + [2.0] * (6 - switch)
    assert "transformer_2.weights" in plan.fingerprint


def test_per_expert_cells_never_read_across_the_switch():
    comps = two_experts(0.875)
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("fbcache", rel_l1_thresh=10.0)  # reuse whenever a residual is there
    pipe.set_progress_bar_config(disable=True)
    plan = pipe.compile(6, 5.0, height=32, width=48, num_frames=9)
    models = plan.spec.step_models
    for cell in plan.nodes(Cell):
        assert cell.model == models[cell.step]
    generate(pipe, num_inference_steps=6)
    trace = pipe.cache.stats.trace  # (model, branch, unit) -> that model's decisions, a letter a step
    counts = {m: models.count(m) for m in ("transformer", "transformer_2")}
    for branch in ("cond", "uncond"):
        for model, count in counts.items():
            decisions = trace[(model, branch, 0)]
            assert len(decisions) == count
            # each expert's first step computes (no residual of its own yet), though the threshold
            # reuses whatever is there: the first expert's residual is not
            assert decisions[0] == "C" and set(decisions[1:]) == {"S"}, trace


@pytest.mark.filterwarnings("ignore:teacache. the t2v-1.3B coefficients")
def test_folding_evaluates_each_experts_own_time_embedding():
    """TeaCache's signal depends on the timestep and the weights: folded at compile time it must be
    each step's own expert's, or the fixed schedule differs from the decisions taken at run time."""
    runs = []
    for fold in (True, False):
        pipe = EditWanPipeline(**two_experts(0.875))
        # the identity polynomial: the decisions follow the signal itself (the 1.3B coefficients
        # rescale the tiny model's signal to always or never); at 10 steps and 0.2 a fold that took
        # the first expert's embedding for every step folds CSCCSC for the second expert, which at
        # run time decides CCCCCC (checked by breaking the fold once)
        pipe.enable_cache("teacache", rel_l1_thresh=0.2, num_inference_steps=10, fold=fold, coefficients=[0, 0, 0, 1, 0])
        latents = generate(pipe, num_inference_steps=10)
        runs.append((latents, dict(pipe.cache.stats.trace)))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


@pytest.mark.filterwarnings("ignore:teacache. the t2v-1.3B coefficients")
def test_a_two_expert_plan_replays_and_refuses_other_weights(tmp_path):
    comps = two_experts(0.875)
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=0.3, num_inference_steps=6)
    plan = pipe.compile(6, 5.0, height=32, width=48, num_frames=9)
    path = plan.save(tmp_path / "plan.json")
    direct = generate(pipe, num_inference_steps=6)
    from edit.graph import Plan

    replayed = generate(pipe, num_inference_steps=6, plan=Plan.load(path))
    assert torch.equal(direct, replayed)
    other = dict(comps, transformer_2=copy.deepcopy(comps["transformer_2"]))
    with torch.no_grad():
        next(other["transformer_2"].parameters()).add_(1.0)
    pipe_2 = EditWanPipeline(**other)
    pipe_2.enable_cache("teacache", rel_l1_thresh=0.3, num_inference_steps=6)
    with pytest.raises(ValueError, match="transformer_2.weights"):
        generate(pipe_2, num_inference_steps=6, plan=Plan.load(path))


def test_boundary_without_a_second_expert_is_refused_before_any_work():
    comps = dict(components(), boundary_ratio=0.5)
    with pytest.raises(ValueError, match="boundary_ratio: .*no transformer_2"):
        generate(EditWanPipeline(**comps), num_inference_steps=2)


def test_the_summary_names_the_expert_of_each_step():
    pipe = EditWanPipeline(**two_experts(0.875))
    pipe.enable_cache("fbcache", rel_l1_thresh=0.1)
    summary = pipe.compile(6, 5.0, height=32, width=48, num_frames=9).summary()
    assert summary.splitlines() == [
        "step  cond    uncond  model",
        "   0  C       C       transformer",
        "   1  ?       ?       transformer",
        "   2  C       C       transformer_2",  # the second expert's first step computes: nothing of its own to reuse
        "   3  ?       ?       transformer_2",
        "   4  ?       ?       transformer_2",
        "   5  ?       ?       transformer_2"]
    single = EditWanPipeline(**components()).compile(2, 5.0, height=32, width=48, num_frames=9).summary()
    assert "model" not in single


def _hooks():
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    return {"fbc": lambda pipe: FirstBlockCacheConfig(threshold=0.2),
            # each expert's hook is told all 6 steps though it runs only its own (diffusers#14025):
            # the same on both pipelines, and a second call repeats the first (checked below)
            "magcache": lambda pipe: MagCacheConfig(mag_ratios=[1.0] * 6, num_inference_steps=6, threshold=0.5,
                                                    retention_ratio=0.0),
            "pab": lambda pipe: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                spatial_attention_timestep_skip_range=(-1, 1001),
                                                                current_timestep_callback=lambda: pipe.current_timestep),
            "taylorseer": lambda pipe: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                             use_lite_mode=True)}


@pytest.mark.parametrize("name", list(_hooks()))
def test_diffusers_hooks_on_both_experts_equal_wan_pipeline(name):
    results = []
    for cls in (WanPipeline, EditWanPipeline):
        comps = two_experts(0.875)
        for key in ("transformer", "transformer_2"):
            comps[key] = copy.deepcopy(comps[key])  # hooks attach to the models
        pipe = cls(**comps)
        for key in ("transformer", "transformer_2"):
            getattr(pipe, key).enable_cache(_hooks()[name](pipe))
        results.append(generate(pipe, num_inference_steps=6))
        assert torch.equal(generate(pipe, num_inference_steps=6), results[-1])  # no state left from the last call
    plain = generate(WanPipeline(**two_experts(0.875)), num_inference_steps=6)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], plain)  # the hooks did change the run


class RecordingOffloadHook:
    """Stands for accelerate's offloading hook (`module._hf_hook`): records when it onloads and parks."""

    def __init__(self, name, events):
        self.name, self.events = name, events

    def pre_forward(self, module, *args, **kwargs):
        self.events.append(("onload", self.name))
        return args, kwargs

    def post_forward(self, module, output):
        self.events.append(("park", self.name))
        return output


@pytest.mark.parametrize("fold", [True, False], ids=["teacache-folded", "teacache-run-time"])
def test_each_experts_offloading_hooks_wrap_its_own_steps_only(fold):
    """As `WanPipeline`'s forwards would with model offloading: one expert onloaded at a time, the
    first parked before the second runs (entering both for the whole run would park the first while
    it still runs); folding enters each expert's hooks around its own time embedding."""
    comps = two_experts(0.875)
    events = []
    for key in ("transformer", "transformer_2"):
        comps[key] = copy.deepcopy(comps[key])
        comps[key]._hf_hook = RecordingOffloadHook(key, events)
        comps[key].blocks[0].register_forward_pre_hook(lambda m, a, key=key: events.append(("block", key)))
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=0.2, num_inference_steps=6, fold=fold, coefficients=[0, 0, 0, 1, 0])
    generate(pipe, num_inference_steps=6)
    onloaded = None
    for kind, key in events:
        if kind == "onload":
            assert onloaded is None, events  # never two experts onloaded at once
            onloaded = key
        elif kind == "park":
            assert onloaded == key, events
            onloaded = None
        else:
            assert onloaded == key, events  # a block runs only while its own expert is onloaded
    assert onloaded is None
    blocks = [key for kind, key in events if kind == "block"]
    assert blocks[0] == "transformer" and blocks[-1] == "transformer_2"


@torch.no_grad()  # autograd-enabled kernels differ in the last bits
def two_expert_teacache_reference(comps, thresholds, steps, guidance=5.0, seed=7):
    """TeaCache as published (no ret-steps: the time embedding's relative L1, accumulated, compute at
    the threshold; the first and last steps forced; `test_cache.teacache_forward`), for two experts:
    each expert keeps its own previous signal, accumulator and residual, with its own threshold, so
    its first step computes. The identity polynomial. Returns the latents and the trace by (expert,
    branch, 0)."""
    from test_cache import teacache_forward

    pipe = WanPipeline(**comps)
    pos, neg = pipe.encode_prompt("a red fox running through snow", None, True, max_sequence_length=512, device="cpu")
    sched = copy.deepcopy(comps["scheduler"])
    sched.set_timesteps(steps, device="cpu")
    sched.set_begin_index(0)
    latents = pipe.prepare_latents(1, 16, 32, 48, 9, torch.float32, "cpu", torch.Generator("cpu").manual_seed(seed))
    boundary = comps["boundary_ratio"] * sched.config.num_train_timesteps
    forwards = {expert: teacache_forward(thresh, [1.0, 0.0], False) for expert, thresh in thresholds.items()}
    states, trace = {}, {}
    for i, t in enumerate(sched.timesteps):
        expert = "transformer" if t >= boundary else "transformer_2"
        preds = {}
        for branch, text in (("cond", pos), ("uncond", neg)):
            preds[branch], compute = forwards[expert](states.setdefault((expert, branch), {}), comps[expert], i, steps,
                                                      latents, t.expand(1), text)
            trace[(expert, branch, 0)] = trace.get((expert, branch, 0), "") + ("C" if compute else "S")
        noise = preds["uncond"] + guidance * (preds["cond"] - preds["uncond"])
        latents = sched.step(noise, t, latents, return_dict=False)[0]
    return latents, trace


THRESHOLDS = {"transformer": 1.5, "transformer_2": 0.8}  # traces CSSC and CSCSCC; 1.5 for both: CSSC, CSSCSC


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "run-time"])
def test_per_expert_teacache_thresholds_match_the_reference(fold):
    comps = two_experts(0.875)
    ref_latents, ref_trace = two_expert_teacache_reference(comps, THRESHOLDS, 10)
    # the thresholds matter: one threshold for both experts would decide otherwise
    _, same = two_expert_teacache_reference(comps, {k: THRESHOLDS["transformer"] for k in THRESHOLDS}, 10)
    assert same != ref_trace and all("S" in t for t in ref_trace.values())
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=THRESHOLDS["transformer"], coefficients=[1.0, 0.0],
                      use_ret_steps=False, fold=fold, per_model={"transformer_2": {"rel_l1_thresh": THRESHOLDS["transformer_2"]}})
    out = generate(pipe, num_inference_steps=10)
    assert pipe.cache.stats.trace == ref_trace
    assert torch.equal(out, ref_latents)


def test_per_model_arguments_print_and_parse_back():
    from edit.passes import Pipeline

    pipe = EditWanPipeline(**two_experts(0.875))
    pipe.enable_cache("fbcache", rel_l1_thresh=0.1, per_model={"transformer_2": {"rel_l1_thresh": 0.2}})
    text = pipe.cache_pipeline
    assert "per_model(base='fbcache'" in text and "'transformer_2': {'rel_l1_thresh': 0.2}" in text
    policy = next(p.policy for p in Pipeline.parse(text).passes if hasattr(p, "policy"))
    assert policy == pipe.cache.policy
    assert policy.policy_for("transformer_2").rel_l1_thresh == 0.2
    assert policy.policy_for("transformer").rel_l1_thresh == 0.1


@pytest.mark.parametrize("per_model, error, match", [
    ({"transformer_3": {"rel_l1_thresh": 0.2}}, ValueError, "per_model: no model 'transformer_3'"),
    ({"transformer_2": 0.2}, TypeError, "per_model: expected"),
    ({"transformer_2": {"threshold": 0.2}}, TypeError, "no argument 'threshold'"),
])
def test_bad_per_model_arguments_are_refused(per_model, error, match):
    pipe = EditWanPipeline(**two_experts(0.875))
    with pytest.raises(error, match=match):
        pipe.enable_cache("fbcache", rel_l1_thresh=0.1, per_model=per_model)
    assert pipe.cache is None


def test_calibrate_teacache_fits_one_polynomial_per_expert():
    from edit.cache import calibrate_teacache

    pipe = EditWanPipeline(**two_experts(0.875))
    pipe.set_progress_bar_config(disable=True)
    steps = 8
    models = pipe.compile(steps, 5.0, height=32, width=48, num_frames=9).spec.step_models
    cal = calibrate_teacache(pipe, ["a red fox", "a blue whale"], num_inference_steps=steps, degree=1,
                             height=32, width=48, num_frames=9)
    assert set(cal.models) == {"transformer", "transformer_2"} and cal.model == "transformer"
    for model, fit in cal.models.items():
        # a sample is a change between two steps of one expert, per branch and prompt: none across the switch
        assert len(fit.signal_changes) == (models.count(model) - 1) * 2 * 2
        assert fit.coefficients == tuple(float(c) for c in np.polyfit(fit.signal_changes, fit.residual_changes, 1))
    assert cal.models["transformer"].coefficients != cal.models["transformer_2"].coefficients
    kwargs = cal.policy_kwargs()
    assert kwargs["per_model"] == {"transformer_2": {"coefficients": cal.models["transformer_2"].coefficients}}
    pipe.enable_cache("teacache", rel_l1_thresh=0.2, **kwargs)
    generate(pipe, num_inference_steps=steps)
    assert pipe.cache.policy.policy_for("transformer_2").coefficients == cal.models["transformer_2"].coefficients


@pytest.mark.parametrize("level", ["steps", "units", "nodes"])
def test_drawings_name_the_expert_of_each_step(tmp_path, level):
    pipe = EditWanPipeline(**two_experts(0.875))
    pipe.enable_cache("fbcache", rel_l1_thresh=0.1)
    plan = pipe.compile(4, 5.0, height=32, width=48, num_frames=9)
    text = plan.render(tmp_path / "plan.dot", level=level).read_text()
    models = plan.spec.step_models
    assert "transformer" in models and "transformer_2" in models
    for step, model in enumerate(models):
        assert f"step {step}" in text and f"t={plan.spec.timesteps[step]:g} · {model}" in text


def test_from_pretrained_loads_a_folder_holding_both_experts(tmp_path):
    comps = two_experts(0.875)
    WanPipeline(**comps).save_pretrained(tmp_path / "wan22")
    loaded = EditWanPipeline.from_pretrained(tmp_path / "wan22")
    assert loaded.transformer_2 is not None and loaded.config.boundary_ratio == 0.875
    ref = generate(WanPipeline(**comps), num_inference_steps=4)
    assert torch.equal(generate(loaded, num_inference_steps=4), ref)
