"""Compiler core v2: memory per path, hooks folded or not, user passes, the pipeline text, plan
binding, diffusers' cache hooks and import layering."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys

import pytest
import torch
from conftest import SIZE, components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline
from edit.cache import CachePolicy, apply_cache_on_transformer, remove_cache_from_transformer
from edit.graph import Cell, RunSpec, lower, verify
from edit.passes import Pipeline, SetCells, default_pipeline, set_cells

IDENTITY = [1.0, 0.0]


# -- memory: every value freed after its last use on the path that ran -------------------------

def live_hidden_tensors(shape: torch.Size) -> int:
    """Tensors of `shape` alive now, found from outside the runtime (the garbage collector's view;
    no collection first: a tensor kept alive by a reference cycle counts as kept)."""
    return sum(1 for o in gc.get_objects() if _tensor_of(o, shape))


def _tensor_of(obj: object, shape: torch.Size) -> bool:
    try:
        return isinstance(obj, torch.Tensor) and obj.shape == shape
    except ReferenceError:  # a dead weakref.proxy (torch.compile's caches leave some): not a live tensor
        return False


@pytest.mark.parametrize("granularity", ["stack", "per_block", 2])
@pytest.mark.parametrize("policy, kwargs", [
    ("fbcache", dict(rel_l1_thresh=10.0)),                                   # every cell after step 0 reused
    ("teacache", dict(rel_l1_thresh=10.0, coefficients=IDENTITY, fold=False)),  # run-time TeaCache, mostly reused
], ids=["fbcache", "teacache-unfolded"])
def test_live_hidden_states_stay_flat_over_the_steps(policy, kwargs, granularity):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache(policy, granularity=granularity, **kwargs)
    steps = 16
    shapes = set()
    pipe.cache.add_hook("before_unit", lambda ev: shapes.add(ev.hidden.shape))
    counts = []

    def count(p, step, t, kw):
        (hidden_shape,) = shapes  # (batch, tokens, inner dim)
        counts.append(live_hidden_tensors(hidden_shape))
        return {}
    generate(pipe, num_inference_steps=steps, callback_on_step_end=count)
    stats = pipe.cache.stats
    assert stats.skipped > stats.computed  # most cells took the reuse path
    assert len(counts) == steps and counts[0] > 0
    assert max(counts[2:]) == min(counts[2:]), counts  # flat: nothing kept from step to step beyond the residuals


# -- hooks: one decision function, folded or not ------------------------------------------------

def test_the_same_hooks_give_the_same_trace_and_output_folded_or_not():
    results = []
    for fold in (True, False):
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("teacache", rel_l1_thresh=0.5, coefficients=IDENTITY, fold=fold)
        seen = {"after_decision": [], "before_unit": 0, "after_unit": 0}
        pipe.cache.add_hook("after_decision", lambda ev: seen["after_decision"].append(ev.step) or
                            (True if ev.step == 7 else None))  # force compute at step 7
        pipe.cache.add_hook("before_unit", lambda ev: seen.__setitem__("before_unit", seen["before_unit"] + 1))
        pipe.cache.add_hook("after_unit", lambda ev: seen.__setitem__("after_unit", seen["after_unit"] + 1))
        out = generate(pipe, num_inference_steps=10)
        results.append((out, pipe.cache.stats.trace, {**seen, "after_decision": list(seen["after_decision"])}))
        fired = len(seen["after_decision"])
        plan = pipe.compile(10, 5.0, **SIZE)
        # a decision hook keeps the cells decided at run time, where it fires; compiling is pure
        assert plan.cell_at(7, "cond", 0).mode == "decide" and len(seen["after_decision"]) == fired
        del pipe.cache.hooks["after_decision"][:]
        unhooked = pipe.compile(10, 5.0, **SIZE).cell_at(7, "cond", 0).mode
        assert (unhooked != "decide") == fold  # no hook: folded (when asked)
    (folded, folded_trace, folded_seen), (dynamic, dynamic_trace, dynamic_seen) = results
    assert folded_trace == dynamic_trace and torch.equal(folded, dynamic)
    assert folded_trace[("cond", 0)][7] == "C" and "S" in folded_trace[("cond", 0)]
    assert folded_seen["before_unit"] == dynamic_seen["before_unit"] == 20  # every cell, run time
    assert folded_seen["after_unit"] == dynamic_seen["after_unit"] == 20
    assert sorted(folded_seen["after_decision"]) == sorted(dynamic_seen["after_decision"])


# -- user passes ------------------------------------------------------------------------------------

STEPS = 9
FORA_STEPS = [s for s in range(STEPS) if s % 3]  # reuse 2 of every 3 steps
MIDDLE = [1]  # units of 2 blocks on a 4-block model: u0 (blocks 0:2), u1 (2:4); reuse the later one


def fora(graph):
    """A FORA-style static schedule written with the public editing API."""
    return set_cells(graph, "reuse", steps=FORA_STEPS, units=MIDDLE)


class ForaPolicy(CachePolicy):
    """The same decisions, made by a policy at run time."""

    def should_compute(self, ctx):
        return not (ctx.step in FORA_STEPS and ctx.unit_index in MIDDLE)


def test_a_fora_style_user_pass_equals_a_policy_making_the_same_decisions():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("none", granularity=2, passes=[fora])
    out = generate(pipe, num_inference_steps=STEPS)
    trace = pipe.cache.stats.trace
    expected = "".join("S" if s in FORA_STEPS else "C" for s in range(STEPS))
    assert trace == {("cond", 0): "C" * STEPS, ("cond", 1): expected, ("uncond", 0): "C" * STEPS,
                     ("uncond", 1): expected}
    assert "fora" in pipe.cache_pipeline
    plan = pipe.compile(STEPS, 5.0, **SIZE)
    assert plan.cell_at(2, "cond", 1).source == 0 and "source=s0" in plan.to_text()
    reference = EditWanPipeline(**components())
    reference.enable_cache(ForaPolicy(), granularity=2)
    assert torch.equal(generate(reference, num_inference_steps=STEPS), out)
    assert reference.cache.stats.trace == trace
    text_pass = EditWanPipeline(**components())  # the same pass as pipeline text
    text_pass.enable_cache("none", granularity=2, passes=[SetCells("reuse", steps=FORA_STEPS, units=MIDDLE)])
    assert torch.equal(generate(text_pass, num_inference_steps=STEPS), out)


def test_apply_cache_on_transformer_runs_the_same_default_pipeline():
    comps = components()
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2, passes=[fora], prefetch=2)
    expected = generate(pipe, num_inference_steps=STEPS)
    plain = WanPipeline(**comps)
    controller = apply_cache_on_transformer(comps["transformer"], "fbcache", rel_l1_thresh=0.08, granularity=2,
                                            passes=[fora], prefetch=2)
    try:
        got = generate(plain, num_inference_steps=STEPS)
    finally:
        remove_cache_from_transformer(comps["transformer"])
    assert controller.stats.trace == pipe.cache.stats.trace and torch.equal(got, expected)
    assert "S" in pipe.cache.stats.trace[("cond", 1)]


def test_pipeline_text_round_trips_and_names_bad_text():
    text = ("regroup(granularity=2),apply_policy(policy=teacache(rel_l1_thresh=0.3, wan_variant='t2v-14B', "
            "coefficients=(1.0, -2.5), use_ret_steps=False)),fold_static,"
            "set_cells(mode=reuse, steps=[1, 2], units=[0]),schedule_prefetch(lead=2),dce")
    pipeline = Pipeline.parse(text)
    assert str(pipeline) == text and Pipeline.parse(str(pipeline)) == pipeline
    assert str(default_pipeline(granularity="per_block", policy="fbcache", prefetch=3)) == \
        ("regroup(granularity=per_block),apply_policy(policy=fbcache(rel_l1_thresh=0.1, warmup_steps=0)),"
         "fold_static,schedule_prefetch(lead=3),dce")
    for bad, match in [("regroup(size=2)", "regroup has no parameter 'size'"), ("teleport", "unknown pass 'teleport'"),
                       ("regroup(granularity=", "not a pipeline"), ("set_cells(mode=x)", "mode")]:
        with pytest.raises(ValueError, match=match):
            Pipeline.parse(bad)(lower(RunSpec(num_steps=2, timesteps=(2.0, 1.0), num_blocks=4)))


def test_a_full_pipeline_replaces_the_default():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("none", pipeline="regroup(granularity=2),apply_policy(policy=none),fold_static,"
                                       "set_cells(mode=reuse, steps=[1, 2, 4, 5, 7, 8], units=[1])")
    out = generate(pipe, num_inference_steps=STEPS)
    reference = EditWanPipeline(**components())
    reference.enable_cache("none", granularity=2, passes=[fora])
    assert torch.equal(out, generate(reference, num_inference_steps=STEPS))


# -- plans bound to their model and call --------------------------------------------------------------

def test_a_weight_change_recompiles_the_folded_plan():
    comps = components()
    comps["transformer"] = copy.deepcopy(comps["transformer"])  # its weights are changed below
    pipe = EditWanPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=0.5, coefficients=IDENTITY)
    generate(pipe, num_inference_steps=10)
    first = pipe._program_cache[1]
    generate(pipe, num_inference_steps=10)
    assert pipe._program_cache[1] is first  # same call, same weights: reused
    other = components(seed=1)["transformer"].state_dict()
    pipe.transformer.load_state_dict(other)
    generate(pipe, num_inference_steps=10)
    assert pipe._program_cache[1] is not first


def test_a_plan_replayed_under_another_call_is_refused_naming_the_field():
    pipe = EditWanPipeline(**components())
    plan = pipe.compile(3, 5.0, **SIZE)
    with pytest.raises(ValueError, match="plan: guidance_scale: the plan was compiled for 5.0, this call has 9.0"):
        generate(pipe, plan=plan, guidance_scale=9.0)
    with pytest.raises(ValueError, match="plan: latent_shape"):
        generate(pipe, plan=plan, width=64)
    other = EditWanPipeline(**components(seed=1))
    with pytest.raises(ValueError, match="plan: weights"):
        generate(other, plan=plan)
    bf16 = EditWanPipeline(**components(dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="plan: (weights|dtype)"):
        generate(bf16, plan=plan)


def test_a_plan_with_cells_needs_an_enabled_cache():
    pipe = EditWanPipeline(**components())
    plan = set_cells(pipe.compile(3, 5.0, **SIZE), "reuse", steps=[2])
    with pytest.raises(ValueError, match="cache cells; enable a cache"):
        generate(pipe, plan=plan)


# -- diffusers' own cache hooks -----------------------------------------------------------------------

def _configs():
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    out = [("fbc", lambda pipe: FirstBlockCacheConfig(threshold=0.2)),
           ("pab", lambda pipe: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                spatial_attention_timestep_skip_range=(-1, 1001),
                                                                current_timestep_callback=lambda: pipe.current_timestep)),
           # lite mode: TaylorSeer's default patterns must fullmatch `blocks.*attn`, and hook nothing on
           # Wan (its attentions are `attn1` and `attn2`)
           ("taylorseer", lambda pipe: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                             use_lite_mode=True))]
    try:
        from diffusers import MagCacheConfig
        out.append(("magcache", lambda pipe: MagCacheConfig(mag_ratios=[1.0] * 6, num_inference_steps=6,
                                                            threshold=0.5, retention_ratio=0.0)))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("name, make", _configs(), ids=[n for n, _ in _configs()])
def test_diffusers_cache_hooks_run_under_the_edit_runtime(name, make):
    results = []
    for cls in (WanPipeline, EditWanPipeline):
        comps = components()
        comps["transformer"] = copy.deepcopy(comps["transformer"])  # hooks attach to the model
        pipe = cls(**comps)
        pipe.transformer.enable_cache(make(pipe))
        results.append(generate(pipe, num_inference_steps=6))
    plain = generate(WanPipeline(**components()), num_inference_steps=6)
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], plain)  # the hook did change the run (else the parity says nothing)


# -- the strict verifier, and runtime errors in IR terms ----------------------------------------------

def test_a_kernel_error_names_the_node_being_executed():
    pipe = EditWanPipeline(**components())
    plan = pipe.compile(3, 5.0, **SIZE)
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("shape mismatch deep in torch")
    pipe.adapter.run_blocks = boom
    with pytest.raises(RuntimeError, match=r"shape mismatch deep in torch\n  while executing %s0\.cond\.u0 = unit\("):
        generate(pipe, plan=plan)
    assert calls == [1]


# -- import layering ------------------------------------------------------------------------------------

def test_graph_and_passes_import_without_torch_or_diffusers():
    code = ("import sys, edit.graph, edit.passes\n"
            "from edit.graph import RunSpec\n"
            "from edit.passes import Pipeline, make_policy\n"
            "from edit.passes.compiler import CacheSettings, ModelInfo, compile_plan\n"
            "p = make_policy('teacache', rel_l1_thresh=0.2)\n"
            "spec = RunSpec(num_steps=3, timesteps=[999, 500, 1], num_blocks=2)\n"
            "plan, _ = compile_plan(spec, ModelInfo('transformer', 2, {'model': 'm'}), CacheSettings(p))\n"
            "assert 'apply_policy(policy=teacache(' in plan.pipeline\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_verify_after_every_pass_in_debug_mode_names_the_pass():
    def breaker(graph):
        g = graph.copy()
        g.remove_node(g.find(Cell, step=1, branch="cond")[0])
        return g
    graph = lower(RunSpec(num_steps=3, timesteps=(3.0, 2.0, 1.0), num_blocks=4))
    pipeline = Pipeline(list(default_pipeline(policy="none", passes=[breaker]).passes), debug=True)
    with pytest.raises(ValueError, match=r"after pass breaker: %s1\.cond\.head: input 'hidden' has no producer"):
        pipeline(graph)
    assert verify(default_pipeline(policy="none")(graph)) is not None


# -- verify rejects each malformed edit, naming the node ---------------------------------------------

def _plan(**kw):
    from edit.passes import apply_policy, regroup
    spec = RunSpec(num_steps=4, timesteps=(4.0, 3.0, 2.0, 1.0), num_blocks=4, **kw)
    return apply_policy(regroup(lower(spec), 2), "fbcache")


def _evolve(graph, name, **changes):
    import attrs
    g = graph.copy()
    g.replace_node(g.node(name), attrs.evolve(g.node(name), **changes))
    return g


def _static():
    return set_cells(lower(RunSpec(num_steps=4, timesteps=(4.0, 3.0, 2.0, 1.0), num_blocks=4, granularity=2)),
                     "reuse", steps=[1, 3])


def _edge_select(g):
    g = g.copy()
    head = g.node("s0.cond.head")
    cell = g.node("s0.cond.u1")
    g.remove_edge(cell, head, port="hidden")
    g.add_edge(cell, head, port="hidden", select="hidden")
    return g


def _drop_last_step(g):
    g = g.copy()
    for node in list(g.find(step=3)):
        g.remove_node(node)
    g.add_edge(g.node("s2.update"), g.node("out"), port="latents")
    return g


def _bogus_input(g):
    from edit.graph import Input
    g = g.copy()
    g.replace_all_uses_with(g.node("in.text.cond"), g.add_node(Input("text.bogus")))
    return g


def _same_name(g):
    from edit.graph import Unit
    g = g.copy()
    g.nx.add_node(Unit(0, "cond", 0, (0, 2)))  # a second record printing as %s0.cond.u0, behind the API's back
    return g


@pytest.mark.parametrize("make, match", [
    (lambda: _evolve(_plan(), "s1.cond.u1", blocks=(3, 9)), r"%s1\.cond\.u1: blocks 3:9 are not a non-empty range"),
    (lambda: _evolve(_plan(), "s1.cond.u1", blocks=(4, 3)), r"%s1\.cond\.u1: blocks 4:3 are not a non-empty range"),
    (lambda: _evolve(_plan(), "s1.cond.u1", blocks=(2, 4)), r"%s1\.cond\.u1: blocks 2:4 overlap an earlier unit"),
    (lambda: _evolve(_plan(), "s2.cond.embed", step=-1), r"%s-1\.cond\.embed: step -1 is outside the spec"),
    (lambda: _evolve(_plan(), "s2.cond.embed", step=99), r"%s99\.cond\.embed: step 99 is outside the spec"),
    (lambda: _drop_last_step(_plan()), r"%s3\.cond\.embed: missing; the spec runs step 3"),
    (lambda: _evolve(_static(), "s3.cond.u1", source=0), r"%s3\.cond\.u1: source=s0: its residual is overwritten "
                                                         r"by %s2\.cond\.u1"),
    (lambda: _evolve(_static(), "s3.cond.u1", source=1), r"%s3\.cond\.u1: source=s1: that cell is in mode reuse"),
    (lambda: _evolve(_static(), "s0.cond.u1", mode="reuse"), r"%s0\.cond\.u1: mode reuse but no earlier step"),
    (lambda: _bogus_input(_plan()), r"%in\.text\.bogus: unknown run input 'text\.bogus'"),
    (lambda: _edge_select(_plan()), r"%s0\.cond\.head: input 'hidden' selects 'hidden' of %s0\.cond\.u1, which "
                                    r"yields a single value"),
    (lambda: _evolve(_plan(), "s1.guide", scale=9.0), r"%s1\.guide: scale 9\.0 differs from the spec's"),
    (lambda: _evolve(_plan(), "s1.cond.u0", mode="skip"), r"%s1\.cond\.u0: mode 'skip' is not one of"),
    (lambda: _same_name(_plan()), r"dangling node: %s0\.cond\.u0 is not a node of the graph"),
])
def test_verify_rejects_malformed_plans_naming_the_node(make, match):
    from edit.graph import GraphError
    with pytest.raises(GraphError, match=match):
        verify(make())


def test_editing_api_keeps_graphs_valid_or_names_the_node():
    from edit.graph import GraphError, Prefetch, step_key
    from edit.passes import dce, insert_prefetch, remove_prefetch, reroute_reuse
    g = _static()
    rerouted = verify(reroute_reuse(g, (3, "cond", 1), 0))  # past the newer write at s2: s0 gets pinned
    assert rerouted.node("s0.cond.u1").pin and rerouted.node("s3.cond.u1").source == 0
    reader = rerouted.node("s3.cond.u1")
    assert rerouted.read_key(reader) == step_key(rerouted, reader, 0, 0) == ("transformer", 0, "cond", 1, 0,
                                                                              rerouted.spec.timesteps[0], None)
    assert not g.node("s0.cond.u1").pin  # the input graph is left as it was
    with pytest.raises(GraphError, match=r"%s3\.cond\.u1: source=s1: %s1\.cond\.u1 is in mode reuse"):
        reroute_reuse(g, (3, "cond", 1), 1)
    staged = verify(insert_prefetch(g, (3, "cond", 1), (3, "cond", 0)))
    assert [p.name for p in staged.nodes(Prefetch)] == ["s3.cond.u1.prefetch"]
    with pytest.raises(GraphError, match=r"%s3\.cond\.u1\.prefetch: issued at s1\.cond\.u0, before %s2\.cond\.u1 writes"):
        insert_prefetch(g, (3, "cond", 1), (1, "cond", 0))
    assert not remove_prefetch(staged, (3, "cond", 1)).nodes(Prefetch)
    assert dce(g) is g  # nothing dead
    with pytest.raises(GraphError, match=r"%s0\.cond\.u0: cannot reuse: it is the first step"):
        set_cells(g, "reuse", steps=[0])
    from edit.graph import Unit
    with pytest.raises(ValueError, match=r"node: %s0\.cond\.u0 is already in the graph as another record"):
        g.copy().add_node(Unit(0, "cond", 0, (0, 2)))
    recomputed = set_cells(g, "compute", steps=[2])  # s3 now reads s2
    assert recomputed.node("s3.cond.u1").source == 2


def test_a_run_time_plan_with_a_user_edit_runs_and_counts_its_static_cells():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.0, granularity=2,  # never skips by itself
                      passes=[lambda g: set_cells(g, "reuse", steps=[3], units=[1])])
    generate(pipe, num_inference_steps=5)
    assert pipe.cache.stats.trace[("cond", 1)] == "CCCSC" and pipe.cache.stats.trace[("cond", 0)] == "CCCCC"
