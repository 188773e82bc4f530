"""Cache policies as passes: exactness with skipping off, reference algorithms, folding, custom
policies, CFG-independent state, hooks, transformer patching and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL, components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline
from edit.cache import (REGISTRY, CachePolicy, apply_cache_on_transformer, register_policy, relative_l1,
                        remove_cache_from_transformer)
from edit.graph import Cell, Unit

STEPS = 10
GRANULARITIES = ["stack", "per_block", 2, 3]
IDENTITY = [1.0, 0.0]  # poly(x) = x: thresholds in raw relative-L1 units on the tiny model


def run(pipe, **kw):
    return generate(pipe, **{"num_inference_steps": STEPS, **kw})


@pytest.fixture(scope="module")
def reference():
    return run(EditWanPipeline(**components()))


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("policy, kwargs", [("teacache", dict(rel_l1_thresh=0)), ("fbcache", dict(rel_l1_thresh=0)),
                                            ("none", {})], ids=["teacache-0", "fbcache-0", "none"])
def test_skipping_disabled_is_bit_identical(reference, policy, kwargs, granularity):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache(policy, granularity=granularity, **kwargs)
    out = run(pipe)
    assert torch.equal(out, reference)
    assert pipe.cache.stats.skipped == 0 and pipe.cache.stats.computed > 0


# -- independent reference implementations (REFERENCE.md), straight over diffusers modules -------

def _embed(m, x, t, text):
    rotary = m.rope(x)
    h = m.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
    temb, proj, enc, _ = m.condition_embedder(t, text, None)
    return h, temb, proj.unflatten(1, (6, -1)), enc, rotary


def _head(m, h, temb, shape):
    shift, scale = (m.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    h = m.proj_out((m.norm_out(h.float()) * (1 + scale) + shift).type_as(h))
    b, _, f, hh, ww = shape
    h = h.reshape(b, f, hh // 2, ww // 2, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@torch.no_grad()  # autograd-enabled kernels differ in the last bits
def reference_loop(comps, forward_fn, steps=STEPS, guidance=5.0, seed=7):
    """A plain denoising loop; `forward_fn(state, branch, i, n, x, t, text)` returns (noise, decision)."""
    pipe = WanPipeline(**comps)
    pos, neg = pipe.encode_prompt("a red fox running through snow", None, True, max_sequence_length=512, device="cpu")
    sched = comps["scheduler"]
    sched.set_timesteps(steps, device="cpu")
    sched.set_begin_index(0)
    latents = pipe.prepare_latents(1, 16, SMALL["height"], SMALL["width"], SMALL["num_frames"], torch.float32,
                                   "cpu", torch.Generator("cpu").manual_seed(seed))
    states = {"cond": {}, "uncond": {}}
    trace = {"cond": "", "uncond": ""}
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            preds = {}
            for branch, text in (("cond", pos), ("uncond", neg)):
                preds[branch], compute = forward_fn(states[branch], comps["transformer"], i, steps, latents,
                                                    t.expand(1), text)
                trace[branch] += "C" if compute else "S"
            noise = preds["uncond"] + guidance * (preds["cond"] - preds["uncond"])
            latents = sched.step(noise, t, latents, return_dict=False)[0]
    return latents, trace


def teacache_forward(thresh, coefficients, use_ret_steps):
    poly = np.poly1d(coefficients)

    def forward(st, m, i, n, x, t, text):
        h, temb, e0, enc, rotary = _embed(m, x, t, text)
        signal = e0 if use_ret_steps else temb
        # a state with no previous signal (a second expert's first step) computes, as the first step does
        forced = (i < 5 if use_ret_steps else i in (0, n - 1)) or "prev" not in st
        if forced:
            st["acc"], compute = 0.0, True
        else:
            prev = st["prev"].float()
            st["acc"] += float(poly(((signal.float() - prev).abs().mean() / prev.abs().mean()).item()))
            compute = st["acc"] >= thresh
            if compute:
                st["acc"] = 0.0
        st["prev"] = signal
        if compute:
            out = h
            for block in m.blocks:
                out = block(out, enc, e0, rotary)
            st["residual"] = out - h
        else:
            out = h + st["residual"]
        return _head(m, out, temb, x.shape), compute
    return forward


def fbcache_forward(thresh):
    def forward(st, m, i, n, x, t, text):
        h, temb, e0, enc, rotary = _embed(m, x, t, text)
        out0 = m.blocks[0](h, enc, e0, rotary)
        r0 = out0 - h
        prev = st.get("prev_r0")
        hit = prev is not None and ((r0.float() - prev.float()).abs().mean() / prev.float().abs().mean()).item() < thresh
        if hit:
            out = out0 + st["rest"]
        else:
            st["prev_r0"] = r0
            out = out0
            for block in m.blocks[1:]:
                out = block(out, enc, e0, rotary)
            st["rest"] = out - out0
        return _head(m, out, temb, x.shape), not hit
    return forward


@pytest.mark.parametrize("use_ret_steps, thresh", [(True, 0.5), (False, 1.0)])
def test_teacache_matches_reference_algorithm(use_ret_steps, thresh):
    comps = components()
    ref_latents, ref_trace = reference_loop(comps, teacache_forward(thresh, IDENTITY, use_ret_steps))
    assert "S" in ref_trace["cond"] and "C" in ref_trace["cond"][5:] + ref_trace["cond"][1:-1]
    for fold in (True, False):
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("teacache", rel_l1_thresh=thresh, coefficients=IDENTITY, use_ret_steps=use_ret_steps,
                          fold=fold)
        out = run(pipe)
        assert pipe.cache.stats.trace == {("cond", 0): ref_trace["cond"], ("uncond", 0): ref_trace["uncond"]}
        assert torch.equal(out, ref_latents)


def test_teacache_with_published_coefficients_matches_reference():
    comps = components()
    coeffs = [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02]
    ref_latents, ref_trace = reference_loop(comps, teacache_forward(0.2, coeffs, True))
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", rel_l1_thresh=0.2, wan_variant="t2v-1.3B")
    assert torch.equal(run(pipe), ref_latents)
    assert pipe.cache.stats.trace[("cond", 0)] == ref_trace["cond"]


def test_fbcache_matches_reference_algorithm():
    comps = components()
    ref_latents, ref_trace = reference_loop(comps, fbcache_forward(0.08))
    assert "S" in ref_trace["cond"] and "C" in ref_trace["cond"][1:]
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08)
    out = run(pipe)
    assert pipe.cache.stats.trace == {("cond", 0): ref_trace["cond"], ("uncond", 0): ref_trace["uncond"]}
    assert torch.equal(out, ref_latents)


@pytest.mark.parametrize("granularity", ["stack", 2])
def test_folded_and_runtime_teacache_are_identical(granularity):
    pipe = EditWanPipeline(**components())
    settings = dict(rel_l1_thresh=0.5, coefficients=IDENTITY, granularity=granularity)
    pipe.enable_cache("teacache", fold=False, **settings)
    dynamic, dynamic_trace = run(pipe), pipe.cache.stats.trace
    pipe.enable_cache("teacache", fold=True, **settings)
    folded, folded_trace = run(pipe), pipe.cache.stats.trace
    assert torch.equal(folded, dynamic) and folded_trace == dynamic_trace
    assert "S" in "".join(folded_trace.values())
    plan = pipe.compile(STEPS, 5.0, height=SMALL["height"], width=SMALL["width"], num_frames=SMALL["num_frames"])
    assert not [c for c in plan.find(Cell) if c.mode == "decide" or c.consult]
    assert [c for c in plan.find(Cell) if c.mode == "reuse"] and "?" not in plan.summary()
    assert "fold_static: +" in pipe.pass_report() and "fold_static" in plan.pipeline
    assert torch.equal(run(pipe, plan=plan), folded)  # replaying the printed schedule


def test_apply_policy_print_oracle():
    from pathlib import Path

    from edit.graph import RunSpec, lower, verify
    from edit.passes import apply_policy, make_policy, regroup
    base = lower(RunSpec(num_steps=2, timesteps=(900.0, 400.0), num_blocks=4, branches=("cond",), guidance_scale=1.0))
    after = verify(apply_policy(regroup(base, 2), make_policy("fbcache")))
    assert after.to_text() == (Path(__file__).parent / "golden" / "fbcache_2step_k2.txt").read_text()
    assert regroup(base, "stack") is base  # unchanged -> same object


@register_policy("skip_uncond_odd")
class SkipUncondOdd(CachePolicy):
    """Test policy: the uncond branch reuses on odd steps, cond always computes."""

    def reset(self, state):
        state.user["seen"] = 0

    def should_compute(self, ctx):
        ctx.state.user["seen"] += 1
        assert ctx.state.user["seen"] == ctx.step + 1  # one state per (branch, unit), every step
        return ctx.branch == "cond" or ctx.step % 2 == 0


@pytest.mark.parametrize("granularity", ["stack", "per_block", 3])
def test_custom_policy_by_name_with_independent_branch_state(granularity):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("skip_uncond_odd", granularity=granularity)
    run(pipe, num_inference_steps=6)
    trace = pipe.cache.stats.trace
    units = {"stack": 1, "per_block": 4, 3: 2}[granularity]
    assert sorted(trace) == [(b, u) for b in ("cond", "uncond") for u in range(units)]
    for u in range(units):
        assert trace[("cond", u)] == "CCCCCC" and trace[("uncond", u)] == "CSCSCS"
    assert pipe.cache.stats.steps_skipped == pytest.approx(3 / 12)


def test_hooks_observe_and_override_decisions_and_stats_are_live():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", rel_l1_thresh=0.5, coefficients=IDENTITY, fold=False)
    base_trace = (run(pipe), pipe.cache.stats.trace)[1]
    seen, live = [], []
    pipe.cache.add_hook("before_unit", lambda ev: seen.append(("before", ev.step, ev.branch)))
    pipe.cache.add_hook("after_decision", lambda ev: True if ev.step == 7 else None)  # force compute at step 7
    pipe.cache.add_hook("after_unit", lambda ev: seen.append(("after", ev.step, ev.compute)))

    def callback(p, step, t, kw):
        live.append(p.cache.stats.computed + p.cache.stats.skipped)
        return {}
    run(pipe, callback_on_step_end=callback)
    trace = pipe.cache.stats.trace[("cond", 0)]
    assert base_trace[("cond", 0)][7] == "S" and trace[7] == "C"
    assert live == [2 * (i + 1) for i in range(STEPS)]
    assert ("before", 0, "cond") in seen and ("after", 7, True) in seen
    with pytest.raises(ValueError, match="event"):
        pipe.cache.add_hook("whenever", print)


def test_apply_cache_on_transformer_matches_pipeline_and_removal_restores():
    comps = components(num_layers=3)
    plain = WanPipeline(**comps)
    reference = run(plain)
    settings = dict(rel_l1_thresh=0.08)
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("fbcache", granularity="per_block", **settings)
    expected = run(pipe)
    controller = apply_cache_on_transformer(comps["transformer"], "fbcache", granularity="per_block", **settings)
    patched = run(plain)
    assert torch.equal(patched, expected) and controller.stats.trace == pipe.cache.stats.trace
    assert controller.stats.skipped > 0
    remove_cache_from_transformer(comps["transformer"])
    assert "forward" not in comps["transformer"].__dict__
    assert torch.equal(run(plain), reference)


def test_relative_l1():
    assert relative_l1(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])) == 1.0
    assert isinstance(relative_l1(torch.ones(3, dtype=torch.bfloat16), torch.ones(3)), float)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: p.enable_cache("nope"), ValueError, "policy: unknown policy 'nope'; registered: .*teacache"),
    (lambda p: p.enable_cache("teacache", wan_variant="t2v-7B"), ValueError, "wan_variant"),
    (lambda p: p.enable_cache("teacache", rel_l1_thresh=-0.1), ValueError, "rel_l1_thresh"),
    (lambda p: p.enable_cache("fbcache", rel_l1_thresh=-1), ValueError, "rel_l1_thresh"),
    (lambda p: p.enable_cache("teacache", granularity=0), ValueError, "granularity"),
    (lambda p: p.enable_cache("teacache", granularity=5), ValueError, "granularity"),
    (lambda p: p.enable_cache("teacache", granularity="rows"), ValueError, "granularity"),
    (lambda p: p.enable_cache(dict), TypeError, "policy"),
    (lambda p: register_policy("bad")(dict), TypeError, "CachePolicy"),
    (lambda p: p.enable_cache("teacache", store=object()), TypeError, "store"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(EditWanPipeline(**components()))


def test_step_count_mismatch_is_a_clear_error():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", num_inference_steps=8)
    with pytest.raises(ValueError, match="num_inference_steps"):
        run(pipe)
    assert "skip_uncond_odd" in REGISTRY


def test_disable_cache_restores_plain_plan(reference):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.2)
    assert not torch.equal(run(pipe), reference)
    pipe.disable_cache()
    assert pipe.cache is None and torch.equal(run(pipe), reference)
    assert all(isinstance(n, Unit) for n in pipe.compile(2, 5.0).nodes(Unit))
