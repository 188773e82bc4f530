"""Plans and residuals that say what they are (issue 14): each finding reproduced, then the fix shown.

A replayed plan decides with its own policy; compiling is a function of its inputs; a residual key
names its owner, model, generation, branch, unit, timestep and latent shape; every plan is checked
against its call; each cell declares the keys it touches.
"""

from __future__ import annotations

import copy
import json
import threading

import attrs
import pytest
import torch
from conftest import SIZE, components, generate

from edit import EditWanPipeline
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore
from edit.graph import Cell, Plan, lower
from edit.graph.planfile import PlanFileError

FB = dict(rel_l1_thresh=0.3)
STEPS = 6


def fb_pipe(store=None, comps=None, **kw):
    pipe = EditWanPipeline(**(comps or components()))
    pipe.enable_cache("fbcache", granularity=2, store=store, **{**FB, **kw})
    return pipe


# -- 1. a saved plan decides with its own policy, with all its arguments -----------------------------------

def test_a_replayed_plan_decides_with_its_own_policy_whatever_is_enabled(tmp_path):
    pipe = fb_pipe()
    plan = pipe.compile(STEPS, 5.0, **SIZE)
    assert "apply_policy(policy=fbcache(rel_l1_thresh=0.3, warmup_steps=0))" in plan.pipeline
    original = generate(pipe, num_inference_steps=STEPS)
    trace = pipe.cache.stats.trace
    assert "S" in "".join(trace.values())
    plan.save(tmp_path / "p.json")
    for enabled in (dict(policy="fbcache", rel_l1_thresh=0.05), dict(policy="teacache")):
        other = EditWanPipeline(**components())
        other.enable_cache(**enabled, granularity=2)
        out = generate(other, num_inference_steps=STEPS, plan=Plan.load(tmp_path / "p.json"))
        assert other.cache.stats.trace == trace, enabled  # before: CCCC... from the enabled policy
        assert torch.equal(out, original)


def test_a_pipeline_text_naming_another_policy_is_refused():
    pipe = EditWanPipeline(**components())
    with pytest.raises(ValueError, match=r"pipeline: its apply_policy decides with fbcache\(rel_l1_thresh=0.1"):
        pipe.enable_cache("none", pipeline="regroup,apply_policy(policy=fbcache),dce")
    cache = pipe.enable_cache(pipeline="regroup,apply_policy(policy=fbcache(rel_l1_thresh=0.3)),dce")
    assert cache.policy.params()["rel_l1_thresh"] == 0.3  # the text's policy, not a silent default


# -- 2. the compiler is a function of its inputs ----------------------------------------------------------

def test_two_compiles_give_byte_identical_plans_whatever_ran_between(tmp_path):
    store = TieredStore([(GPUStore(), 4000), (DiskStore(tmp_path), None)])
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("warmstart_reuse", warm_steps=2, granularity=2, store=store, rel_l1_thresh=0.5,
                      coefficients=[1.0, 0.0], use_ret_steps=False)
    costs = pipe.cache.costs
    assert costs.bandwidth is not None  # "auto" measured the slow tier once, at enable_cache
    texts = []
    for _ in range(3):
        pipe.compile(STEPS, 5.0, **SIZE).save(tmp_path / "p.json")
        texts.append((tmp_path / "p.json").read_bytes())
        generate(pipe, num_inference_steps=STEPS)  # before: its time per cell flowed into the next compile
    assert texts[0] == texts[1] == texts[2]
    assert "schedule_prefetch(" in json.loads(texts[0])["pipeline"] and pipe.cache.costs.block_seconds is not None
    store.close()


def test_compiling_fires_no_hook_and_reads_nothing_a_run_left():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", rel_l1_thresh=0.5, coefficients=[1.0, 0.0])
    fired = []
    for event in ("before_unit", "after_decision", "after_unit"):
        pipe.cache.add_hook(event, lambda ev: fired.append(ev.event))
    first = pipe.compile(8, 5.0, **SIZE)
    assert fired == []
    generate(pipe, num_inference_steps=8)
    assert fired and pipe.compile(8, 5.0, **SIZE).to_text() == first.to_text()


# -- 3. residual identity -------------------------------------------------------------------------------------

def _stores(tmp_path):
    return {"gpu": lambda: GPUStore(), "cpu": lambda: CPUStore(), "disk": lambda: DiskStore(tmp_path / "d"),
            "tiered": lambda: TieredStore([(GPUStore(), 3000), (CPUStore(), 3000), (DiskStore(tmp_path / "t"), None)])}


@pytest.mark.parametrize("kind", ["gpu", "cpu", "disk", "tiered"])
def test_two_pipelines_sharing_one_store_read_only_their_own_residuals(tmp_path, kind):
    alone = []
    for seed in (1, 2):
        pipe = fb_pipe(_stores(tmp_path / f"alone{seed}")[kind]())
        alone.append(generate(pipe, seed=seed, num_inference_steps=STEPS))
        assert "S" in "".join(pipe.cache.stats.trace.values())
    store = _stores(tmp_path / "shared")[kind]()
    first = fb_pipe(store, comps={k: copy.deepcopy(v) for k, v in components().items()})
    second = fb_pipe(store, comps={k: copy.deepcopy(v) for k, v in components().items()})
    # the second pipeline runs inside the first one's step callback: their steps interleave
    inner = []

    def nested(pipe, step, timestep, kwargs):
        if step == 1:
            inner.append(generate(second, seed=2, num_inference_steps=STEPS))
        return {}
    outer = generate(first, seed=1, num_inference_steps=STEPS, callback_on_step_end=nested)
    assert torch.equal(outer, alone[0]) and torch.equal(inner[0], alone[1])
    # and in two threads at once
    results: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda p=p, s=s: results.__setitem__(s, generate(p, seed=s,
                                                                                        num_inference_steps=STEPS)))
               for p, s in ((first, 1), (second, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results[1], alone[0]) and torch.equal(results[2], alone[1])
    kept = second.cache.residuals.keys()
    first.disable_cache()  # clears its own entries only
    assert kept and second.cache.residuals.keys() == kept
    store.close()


TEA = dict(rel_l1_thresh=0.5, coefficients=[1.0, 0.0], use_ret_steps=False)


def long_pipe(store=None, **kw):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("warmstart_reuse", warm_steps=2, granularity=2, store=store, **{**TEA, **kw})
    return pipe


def _segment(pipe, g, window, **call):
    pipe.cache.set_generation(g)
    pipe.cache.set_reuse_window(window)
    pipe.cache.reset()
    return generate(pipe, reset_cache=False, **call)


def test_a_segment_of_another_shape_or_schedule_reads_nothing_across_it():
    pipe = long_pipe()
    _segment(pipe, 0, [], num_inference_steps=STEPS, num_frames=9, height=32, width=48)
    # 5x48x48 has the same token count as 9x32x48 (2*3*3 = 3*2*3 patches): before, its warm steps read
    # generation 0's residuals (SS, nothing recomputed)
    _segment(pipe, 1, [0], num_inference_steps=STEPS, num_frames=5, height=48, width=48)
    stats = pipe.cache.stats
    assert stats.recomputed == 2 * 2 * 2  # every warm cell (2 steps x 2 branches x 2 units) missed
    assert sorted(stats.recomputed_cells) == sorted((s, b, u) for s in (0, 1) for b in ("cond", "uncond")
                                                    for u in (0, 1))
    # 4 steps after 6: step 1's timestep differs (900 vs 937), so nothing kept at 937 is added at 900
    pipe2 = long_pipe()
    _segment(pipe2, 0, [], num_inference_steps=6)
    _segment(pipe2, 1, [0], num_inference_steps=4)
    assert pipe2.cache.stats.recomputed >= 2 * 2  # step 1 of every unit and branch missed
    assert (1, "cond", 0) in pipe2.cache.stats.recomputed_cells


def test_a_long_video_store_stays_bounded_over_30_segments(tmp_path):
    store = TieredStore([(GPUStore(), 2000), (DiskStore(tmp_path), None)])  # the README's: unbounded disk tier
    pipe = long_pipe(store)
    files = []
    for g in range(30):
        _segment(pipe, g, range(max(0, g - 4), g), num_inference_steps=4)
        files.append(len(list(tmp_path.rglob("*.safetensors"))))
    # what a window of 4 can read: 4 earlier generations' kept warm residuals (2 steps x 2 branches x
    # 2 units = 8 each), plus the current one's 8 and its 4 latest ones; one entry sits on the device
    assert files[10:] == [5 * 8 + 4 - 1] * 20, files
    generations = {k[1] for k in pipe.cache.residuals.keys()}
    assert generations == set(range(25, 30))
    store.close()


def test_keep_generations_bounds_what_a_store_keeps():
    pipe = long_pipe(keep_generations=2)
    for g in range(5):
        _segment(pipe, g, [], num_inference_steps=4)
    assert {k[1] for k in pipe.cache.residuals.keys()} == {3, 4}
    with pytest.raises(ValueError, match="keep_generations"):
        long_pipe(keep_generations=0)


# -- 4. every plan is checked against its call ---------------------------------------------------------------

def test_a_plan_of_another_generation_or_window_is_refused():
    pipe = long_pipe()
    pipe.cache.set_generation(3)
    pipe.cache.set_reuse_window([1, 2])
    plan = pipe.compile(4, 5.0, **SIZE)
    pipe.cache.set_generation(5)
    pipe.cache.set_reuse_window([1, 2])
    with pytest.raises(ValueError, match="plan: generation: the plan was compiled for 3, this call has 5"):
        generate(pipe, num_inference_steps=4, plan=plan, reset_cache=False)
    pipe.cache.set_generation(3)
    pipe.cache.set_reuse_window([2])
    with pytest.raises(ValueError, match=r"plan: window: the plan was compiled for \(1, 2\), this call has \(2,\)"):
        generate(pipe, num_inference_steps=4, plan=plan, reset_cache=False)


@pytest.mark.parametrize("field", ["fingerprint", "weights", "model", "latent_shape", "residual_shape"])
def test_a_plan_file_missing_its_fingerprint_or_a_field_is_refused(tmp_path, field):
    pipe = fb_pipe()
    path = tmp_path / "p.json"
    pipe.compile(STEPS, 5.0, **SIZE).save(path)
    data = json.loads(path.read_text())
    if field == "fingerprint":
        data["fingerprint"] = {}
        missing = "model"
    else:
        del data["fingerprint"][field]
        missing = field
    path.write_text(json.dumps(data))
    with pytest.raises(PlanFileError, match=f"fingerprint: no {missing!r} field"):
        Plan.load(path)
    loose = Plan.load(path, bind=False)  # for inspection and rendering
    assert not loose.bound and loose.summary() and loose.stats()["cells"]["total"] > 0
    with pytest.raises(ValueError, match="bind=False"):
        generate(pipe, num_inference_steps=STEPS, plan=loose)


def test_a_user_pass_may_not_change_the_spec():
    def nine(graph):
        return lower(attrs.evolve(graph.spec, guidance_scale=9.0))

    def two_steps(graph):
        spec = graph.spec
        return lower(attrs.evolve(spec, num_steps=2, timesteps=spec.timesteps[:2]))
    for user_pass, field in ((nine, "guidance_scale"), (two_steps, "num_steps")):
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("none", passes=[user_pass])
        with pytest.raises(ValueError, match=f"{user_pass.__name__}: a pass may not change the run spec \\({field}"):
            generate(pipe, num_inference_steps=5)


# -- 5. declared effects: what runs touches exactly the keys a cell declares ------------------------------------

class Recording(GPUStore):
    def __init__(self):
        super().__init__()
        self.log: list[tuple[str, tuple]] = []

    def put(self, key, tensor):
        self.log.append(("put", key[1:]))
        return super().put(key, tensor)

    def get(self, key):
        self.log.append(("get", key[1:]))
        return super().get(key)


def test_the_executor_reads_and_writes_exactly_the_declared_keys():
    store = Recording()
    pipe = long_pipe(store)
    for g in range(3):
        _segment(pipe, g, range(g), num_inference_steps=STEPS)
    store.log.clear()
    _segment(pipe, 3, range(3), num_inference_steps=STEPS)
    plan = pipe._program_cache[1].graph
    declared_reads = {k for c in plan.nodes(Cell) for k in plan.effects(c).reads}
    declared_writes = {k for c in plan.nodes(Cell) for k in plan.effects(c).writes}
    assert {k for op, k in store.log if op == "get"} <= declared_reads
    assert {k for op, k in store.log if op == "put"} <= declared_writes
    assert any(len(k) == 7 for op, k in store.log if op == "get")  # the window's step keys were read


def test_costs_are_an_explicit_value_recorded_in_the_plan(tmp_path):
    from edit.passes.compiler import CostModel

    store = TieredStore([(GPUStore(), 4000), (DiskStore(tmp_path), None)])
    given = CostModel(bandwidth=1e6, latency=0.01, block_seconds=0.001)
    pipe = long_pipe(store, costs=given)
    assert pipe.cache.costs == given  # nothing measured: the user's figures
    text = pipe.compile(4, 5.0, **SIZE).pipeline
    assert "schedule_prefetch(residual_bytes=1728, bandwidth=1000000.0, latency=0.01, unit_seconds=0.002)" in text
    same = long_pipe(store, prefetch={"bandwidth": 1e6, "latency": 0.01, "block_seconds": 0.001})
    assert same.cache.costs == given and same.compile(4, 5.0, **SIZE).pipeline == text
    with pytest.raises(ValueError, match="prefetch: bandwidth: expected None or a finite number > 0"):
        long_pipe(store, prefetch={"bandwidth": -1})
    with pytest.raises(TypeError, match="costs: expected an edit.passes.compiler.CostModel"):
        long_pipe(store, costs={"bandwidth": 1e6})
    store.close()
