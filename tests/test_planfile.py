"""Plans as artifacts: save and load (versioned JSON), replay in a new process, hand edits, refusals,
`plan.stats()` and `compile(prompt=...)`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import SIZE, components, generate

from edit import EditWanPipeline
from edit.cache import CPUStore, GPUStore, TieredStore
from edit.graph import Cell, Plan
from edit.graph.planfile import PlanFileError
from edit.passes import set_cells

STEPS = 6


def fbcache_pipe(**kw):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2, **kw)
    return pipe


def teacache_pipe():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("teacache", rel_l1_thresh=0.5, coefficients=[1.0, 0.0], granularity=2, prefetch=1)
    return pipe


def test_save_load_round_trip_is_the_same_plan(tmp_path):
    pipe = teacache_pipe()
    plan = pipe.compile(STEPS, 5.0, prompt="a red fox", **SIZE)
    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    assert loaded.to_text() == plan.to_text() and loaded.summary() == plan.summary()
    assert loaded.pipeline == plan.pipeline == pipe.cache_pipeline
    assert loaded.fingerprint == plan.fingerprint
    data = json.loads(path.read_text())
    assert data["format"] == "edit-plan" and data["version"] == 1
    cell = next(n for n in data["nodes"] if n["name"] == "s1.cond.u1")
    assert cell["kind"] == "Cell" and cell["mode"] in ("compute", "reuse")
    assert torch.equal(generate(pipe, plan=loaded, num_inference_steps=STEPS), generate(pipe, num_inference_steps=STEPS))


def test_a_loaded_plan_replays_bit_identically_in_a_new_process(tmp_path):
    pipe = fbcache_pipe()
    plan = pipe.compile(STEPS, 5.0, **SIZE)
    plan.save(tmp_path / "plan.json")
    expected = generate(pipe, plan=plan, num_inference_steps=STEPS)
    tests = Path(__file__).parent
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tests)!r})
        from conftest import components, generate
        from edit import EditWanPipeline
        from edit.graph import Plan
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2)
        out = generate(pipe, plan=Plan.load({str(tmp_path / 'plan.json')!r}), num_inference_steps={STEPS})
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_a_cell_flipped_by_hand_in_the_json_runs_with_that_change(tmp_path):
    pipe = fbcache_pipe(fold=False)
    pipe.enable_cache("fbcache", rel_l1_thresh=0.0, granularity=2)  # never skips by itself
    path = pipe.compile(STEPS, 5.0, **SIZE).save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    cell = next(n for n in data["nodes"] if n["name"] == "s3.uncond.u1")
    cell["mode"] = "reuse"
    path.write_text(json.dumps(data, indent=1))
    generate(pipe, plan=Plan.load(path), num_inference_steps=STEPS)
    assert pipe.cache.stats.trace[("uncond", 1)] == "CCCSCC" and pipe.cache.stats.trace[("cond", 1)] == "CCCCCC"


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("breaks, match", [
    (lambda p: p.write_text(p.read_text()[:200]), r"not a JSON plan file"),
    (lambda p: _edit(p, lambda d: d.update(version=2)), r"version 2 is not supported \(this EDiT reads version 1\)"),
    (lambda p: _edit(p, lambda d: d.update(format="other")), r"not an EDiT plan file"),
    (lambda p: _edit(p, lambda d: d["nodes"][5].update(kind="Teleport")), r"unknown node kind 'Teleport'"),
    (lambda p: _edit(p, lambda d: d["nodes"][5].update(colour="red")), r"has no field\(s\) \['colour'\]"),
    (lambda p: _edit(p, lambda d: next(n for n in d["nodes"] if n["name"] == "s0.cond.u0").update(mode="reuse")),
     r"%s0\.cond\.u0: mode reuse but no earlier step"),
    (lambda p: _edit(p, lambda d: d["edges"].append(["s9.cond.u0", "out", "data", "latents", None])),
     r"edges\[\d+\]: no node %s9\.cond\.u0"),
    (lambda p: _edit(p, lambda d: d["nodes"][5].update(name="s7.bogus")), r"name %s7\.bogus does not match"),
])
def test_broken_files_are_refused_saying_what(tmp_path, breaks, match):
    path = fbcache_pipe().compile(STEPS, 5.0, **SIZE).save(tmp_path / "plan.json")
    breaks(path)
    with pytest.raises(PlanFileError, match=match):
        Plan.load(path)


def test_a_plan_for_another_model_or_size_is_refused_naming_the_field(tmp_path):
    path = fbcache_pipe().compile(STEPS, 5.0, **SIZE).save(tmp_path / "plan.json")
    other = EditWanPipeline(**components(seed=1))
    other.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2)
    with pytest.raises(ValueError, match="plan: weights: the plan was compiled for"):
        generate(other, plan=Plan.load(path), num_inference_steps=STEPS)
    same = fbcache_pipe()
    with pytest.raises(ValueError, match="plan: latent_shape"):
        generate(same, plan=Plan.load(path), num_inference_steps=STEPS, height=64)
    with pytest.raises(PlanFileError, match="no plan file"):
        Plan.load(tmp_path / "missing.json")
    from diffusers import UniPCMultistepScheduler
    shifted = fbcache_pipe()
    shifted.scheduler = UniPCMultistepScheduler.from_config(shifted.scheduler.config, flow_shift=7.0)
    with pytest.raises(ValueError, match="plan: (scheduler|timesteps)"):
        generate(shifted, plan=Plan.load(path), num_inference_steps=STEPS)


def test_stats_predict_what_the_plan_does():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("none", granularity=2, passes=[lambda g: set_cells(g, "reuse", steps=[1, 2, 4, 5], units=[1])])
    plan = pipe.compile(STEPS, 5.0, **SIZE)
    stats = plan.stats()
    assert stats["cells"] == {"total": 24, "compute": 16, "reuse": 8, "decide": 0}
    assert stats["predicted_skip_ratio"] == pytest.approx(8 / 24)
    tokens = 3 * (32 // 16) * (48 // 16)  # latent frames x patches: 32x48 px, VAE 8, patch 2
    inner = components()["transformer"].config.num_attention_heads * components()["transformer"].config.attention_head_dim
    assert stats["residual_bytes"] == tokens * inner * 4
    assert stats["residual_bytes_saved"] == 16 * stats["residual_bytes"]
    assert stats["peak_residual_bytes"] == 4 * stats["residual_bytes"]  # one per (branch, unit)
    assert stats["nodes"]["Cell"] == 24 and stats["nodes"]["Update"] == STEPS
    store = TieredStore([(GPUStore(), stats["residual_bytes"]), (CPUStore(), None)])
    assert plan.stats(store)["peak_residual_bytes_per_tier"] == [stats["residual_bytes"], 3 * stats["residual_bytes"]]
    generate(pipe, num_inference_steps=STEPS)
    assert pipe.cache.stats.skip_ratio == pytest.approx(stats["predicted_skip_ratio"])


def test_compile_takes_the_call_arguments_and_a_prompt():
    pipe = fbcache_pipe()
    a = pipe.compile(STEPS, 5.0, prompt="a red fox", **SIZE)
    b = pipe.compile(STEPS, 5.0, prompt="a cat at a piano", **SIZE)
    assert a.to_text() == b.to_text()  # no built-in pass reads the text
    two = pipe.compile(STEPS, 5.0, prompt=["a", "b"], num_videos_per_prompt=2, **SIZE)
    assert two.fingerprint["latent_shape"][0] == 4


# -- golden prints after each pass of a small plan --------------------------------------------------------

def _small_spec():
    from edit.graph import RunSpec
    return RunSpec(num_steps=3, timesteps=(900.0, 600.0, 300.0), num_blocks=4, branches=("cond",),
                   guidance_scale=1.0)


def _stages():
    from edit.cache import TeaCache
    from edit.graph import lower
    from edit.passes import apply_policy, fold_static, regroup, schedule_prefetch
    policy = TeaCache(rel_l1_thresh=0.5, coefficients=[1.0, 0.0], use_ret_steps=False)
    grouped = regroup(lower(_small_spec()), 2)
    decided = apply_policy(grouped, policy)
    folded = fold_static(decided, lambda g: {c.cell: c.step != 1 for c in g.nodes(Cell)})  # reuse step 1
    user = set_cells(folded, "reuse", steps=[2], units=[0])
    return {"regroup": grouped, "apply_policy": decided, "fold_static": folded, "user_pass": user,
            "schedule_prefetch": schedule_prefetch(user, lead=1)}


@pytest.mark.parametrize("stage", ["regroup", "apply_policy", "fold_static", "user_pass", "schedule_prefetch"])
def test_golden_print_after_each_pass(stage):
    from edit.graph import verify
    graph = verify(_stages()[stage])
    golden = Path(__file__).parent / "golden" / f"stage_{stage}.txt"
    assert graph.to_text() == golden.read_text()
