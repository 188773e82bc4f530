"""Long video: generations, reuse windows, the warm_start pass and the warmstart_reuse policy,
cost-model prefetch (placement, exactness, stalls hidden), per-segment stats, bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from conftest import components, generate

from edit import EditWanPipeline
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore
from edit.graph import Cell, Prefetch, RunSpec, lower, verify
from edit.passes import apply_policy, regroup, schedule_prefetch, set_cells, warm_start

STEPS = 6
PROMPTS = ["a fox in snow", "the fox runs", "the fox jumps", "the fox rests"]
TEA = dict(rel_l1_thresh=0.5, coefficients=[1.0, 0.0], use_ret_steps=False)
GOLDEN = Path(__file__).parent / "golden"


def long_pipe(store=None, **kw):
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("warmstart_reuse", num_inference_steps=STEPS, warm_steps=2, granularity=2, store=store,
                      **{**TEA, **kw})
    return pipe


def run_segments(pipe, count, *, prefetch_reuse=True, window=4, hooks=None):
    outs, traces, stats = [], [], []
    cache = pipe.cache
    for g in range(count):
        cache.set_generation(g)
        cache.set_reuse_window(range(max(0, g - window), g))
        cache.reset(clear_store=False)
        if hooks:
            hooks(g)
        outs.append(generate(pipe, prompt=PROMPTS[g % len(PROMPTS)], num_inference_steps=STEPS, reset_cache=False,
                             prefetch_reuse=prefetch_reuse))
        traces.append(cache.stats.trace)
        stats.append(cache.stats)
    return outs, traces, stats


# -- what the plan says -----------------------------------------------------------------------------

def test_plans_show_cross_generation_reuse_and_segment_0_computes_its_warm_steps():
    pipe = long_pipe()
    pipe.cache.set_generation(0)
    first = pipe.compile(STEPS, 5.0, num_frames=9, height=32, width=48)
    assert "R" not in first.summary() and all(c.pin for c in first.find(Cell) if c.step < 2)
    assert "warm_start(window=[], warm_steps=2)" in first.pipeline
    pipe.cache.set_generation(3)
    pipe.cache.set_reuse_window([1, 2])
    later = pipe.compile(STEPS, 5.0, num_frames=9, height=32, width=48)
    rows = later.summary().splitlines()
    assert rows[1].split()[1:] == ["RR", "RR"] and rows[2].split()[1:] == ["RR", "RR"] and "R" not in "".join(rows[3:])
    cell = later.cell_at(0, "cond", 1)
    t0, shape = later.spec.timesteps[0], "1x16x3x4x6"  # a kept residual says its timestep and latent shape
    assert cell.window == (1, 2) and later.read_keys(cell) == [("transformer", 1, "cond", 1, 0, t0, shape),
                                                              ("transformer", 2, "cond", 1, 0, t0, shape)]
    assert "mode=reuse pin window=[1, 2]" in later.to_text()


# -- exactness of the warm steps ---------------------------------------------------------------------------

def test_warm_steps_add_exactly_the_mean_of_the_windows_kept_residuals():
    store = GPUStore()
    pipe = long_pipe(store)
    run_segments(pipe, 2)
    plan = pipe._program_cache[1].graph
    expected = {}
    for branch in ("cond", "uncond"):
        for unit in (0, 1):
            for step in (0, 1):
                kept = [pipe.cache.residuals.get(("transformer", g, branch, unit, step, plan.spec.timesteps[step],
                                                  "1x16x3x4x6")) for g in (0, 1)]
                assert all(k is not None for k in kept)
                expected[(step, branch, unit)] = torch.stack(kept).mean(dim=0)
    seen = {}
    inputs = {}
    pipe.cache.set_generation(2)
    pipe.cache.set_reuse_window([0, 1])
    pipe.cache.reset()
    pipe.cache.add_hook("before_unit", lambda ev: inputs.__setitem__((ev.step, ev.branch, ev.unit), ev.hidden))
    pipe.cache.add_hook("after_unit", lambda ev: seen.__setitem__((ev.step, ev.branch, ev.unit), ev.output))
    generate(pipe, prompt=PROMPTS[2], num_inference_steps=STEPS, reset_cache=False)
    for cell, mean in expected.items():
        assert torch.equal(seen[cell], inputs[cell] + mean), cell
    assert pipe.cache.stats.recomputed == 0
    assert all(row[:2] == "SS" for row in pipe.cache.stats.trace.values())


def test_a_window_with_nothing_kept_computes_and_an_evicted_residual_is_recomputed(tmp_path):
    pipe = long_pipe()
    pipe.cache.set_generation(5)
    pipe.cache.set_reuse_window([2, 3])  # generations that never ran: nothing kept
    pipe.cache.reset()
    generate(pipe, prompt=PROMPTS[0], num_inference_steps=STEPS, reset_cache=False)
    assert pipe.cache.stats.recomputed == 2 * 2 * 2  # every warm cell (2 steps x 2 branches x 2 units)
    assert sorted(pipe.cache.stats.recomputed_cells) == sorted((s, b, u) for s in (0, 1) for b in ("cond", "uncond")
                                                               for u in (0, 1))
    # a store too small to keep the window: the warm reads miss, recompute, and the run completes
    store = TieredStore([(GPUStore(), 4000), (DiskStore(tmp_path), 8000)])
    small = long_pipe(store)
    outs, _, stats = run_segments(small, 3)
    assert stats[2].recomputed > 0 and all(torch.isfinite(o).all() for o in outs)
    store.close()


# -- prefetch: exact, and hiding a slow tier's stall ------------------------------------------------------

def _stores(tmp_path):
    return {"gpu": lambda: GPUStore(), "cpu": lambda: CPUStore(), "disk": lambda: DiskStore(tmp_path / "d"),
            "tiered": lambda: TieredStore([(GPUStore(), 5000), (CPUStore(), 5000), (DiskStore(tmp_path / "t"), None)])}


@pytest.mark.parametrize("setting", ["auto", 1])
@pytest.mark.parametrize("kind", ["gpu", "cpu", "disk", "tiered"])
def test_prefetch_on_and_off_give_the_same_output_and_traces(tmp_path, kind, setting):
    results = []
    for prefetch in (True, False):
        store = _stores(tmp_path / str(prefetch))[kind]()
        pipe = long_pipe(store, prefetch=setting)
        outs, traces, _ = run_segments(pipe, 3, prefetch_reuse=prefetch)
        results.append((outs, traces))
        plan = pipe._program_cache[1].graph
        # "auto" stages nothing when the store is device memory only
        assert bool(plan.find(Prefetch)) == (prefetch and (setting == 1 or kind != "gpu"))
        store.close()
    (on, on_traces), (off, off_traces) = results
    assert on_traces == off_traces and all(torch.equal(a, b) for a, b in zip(on, off))
    assert any("S" in t for trace in on_traces for t in trace.values())


class SlowDisk(DiskStore):
    """A disk tier whose every read takes `latency` seconds more (a prefetched read pays it off the
    critical path, on the store's I/O threads, several at once as on an NVMe queue)."""

    latency = 0.03

    def __init__(self, folder):
        super().__init__(folder, max_workers=8)

    def _load(self, record, stage):
        time.sleep(self.latency)
        return super()._load(record, stage)


def test_prefetch_hides_most_of_a_slow_tiers_stall(tmp_path):
    stalls = {}
    for prefetch in (False, True):
        store = TieredStore([(GPUStore(), 2000), (SlowDisk(tmp_path / str(prefetch)), None)])
        pipe = long_pipe(store)
        _, _, stats = run_segments(pipe, 3, prefetch_reuse=prefetch)
        last = stats[-1]
        assert last.gets > 0
        stalls[prefetch] = last.get_seconds
        if prefetch:
            delta = last.store_delta
            assert delta["prefetches"] > 0 and delta["prefetch_hits"] + delta["late_waits"] > 0
            assert delta["tiers"][0]["bytes_in"] > 0  # promoted back to the device tier
        store.close()
    assert stalls[False] > 0.5 * SlowDisk.latency * 4  # the warm reads of the window waited on the slow tier
    assert stalls[True] < 0.3 * stalls[False], stalls


# -- placement by the cost model ------------------------------------------------------------------------------

def _warm_plan():
    spec = RunSpec(num_steps=4, timesteps=(4.0, 3.0, 2.0, 1.0), num_blocks=4, branches=("cond",),
                   guidance_scale=1.0, generation=2)
    g = apply_policy(regroup(lower(spec), 2), "none")
    g = set_cells(g, {c.cell: "compute" for c in g.find(Cell)} | {(3, "cond", 1): "reuse"}, consult=False)
    return warm_start(g, (0, 1), 2)


def test_prefetch_placement_golden_and_its_change_with_bandwidth_and_compute():
    fast = verify(schedule_prefetch(_warm_plan(), residual_bytes=4096, bandwidth=4096 / 0.001, unit_seconds=0.01))
    assert fast.to_text() == (GOLDEN / "prefetch_cost_warm.txt").read_text()
    issues = {p.name: p.issue for p in fast.find(Prefetch)}
    slow = schedule_prefetch(_warm_plan(), residual_bytes=4096, bandwidth=4096 / 0.025, unit_seconds=0.01)
    quick_units = schedule_prefetch(_warm_plan(), residual_bytes=4096, bandwidth=4096 / 0.001, unit_seconds=0.0001)
    later = {p.name: p.issue for p in slow.find(Prefetch)}
    # two window reads of 1 ms behind 10 ms cells: one cell ahead
    assert issues["s1.cond.u1.prefetch.g0"] == issues["s1.cond.u1.prefetch.g1"] == (1, "cond", 0)
    # 2 x 25 ms: five cells ahead, but the plan starts two cells before
    assert later["s1.cond.u1.prefetch.g0"] == (0, "cond", 0)
    assert {p.name: p.issue for p in quick_units.find(Prefetch)} == later  # faster cells: the same, earlier
    # a static reuse is never staged before the step that writes it (s2), whatever the lead
    assert issues["s3.cond.u1.prefetch"] == later["s3.cond.u1.prefetch"] == (3, "cond", 0)
    assert all(p.key[1] in (0, 1) for p in fast.find(Prefetch) if p.step == 0)


# -- bad input --------------------------------------------------------------------------------------------------

def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="warm_steps: expected an int >= 0"):
        EditWanPipeline(**components()).enable_cache("warmstart_reuse", warm_steps=-1, **TEA)
    with pytest.raises(ValueError, match="warm_steps: 6 must be fewer than the 6 denoising steps"):
        EditWanPipeline(**components()).enable_cache("warmstart_reuse", warm_steps=6, num_inference_steps=6, **TEA)
    pipe = long_pipe()
    with pytest.raises(ValueError, match="set_reuse_window: set the current generation first"):
        pipe.cache.set_reuse_window([0])
    pipe.cache.set_generation(2)
    with pytest.raises(ValueError, match="holds generation 2, not older than the current generation 2"):
        pipe.cache.set_reuse_window([1, 2])
    with pytest.raises(TypeError, match="reset_cache"):
        generate(pipe, reset_cache="no")
    late = EditWanPipeline(**components())
    late.enable_cache("warmstart_reuse", warm_steps=4, **TEA)
    with pytest.raises(ValueError, match="warm_steps: 4 must be fewer than the 3 denoising steps"):
        generate(late, num_inference_steps=3)


def test_a_prefetched_entry_that_spills_before_its_read_is_staged_again_below(tmp_path):
    disk = DiskStore(tmp_path)
    store = TieredStore([(GPUStore(), 400), (CPUStore(), 400), (disk, None)])
    values = {i: torch.full((100,), float(i)) for i in range(6)}  # 400 bytes each: one per fast tier
    store.put(("k", 0), values[0])
    store.put(("k", 1), values[1])  # k0 spills to the host tier
    store.prefetch(("k", 0))  # staged from the host tier (nothing to wait for there)
    assert disk.stats.prefetches == 0
    store.put(("k", 2), values[2])  # k1 to the host, k0 on to the disk: staged again from there
    assert store.tier_of(("k", 0)) == 2 and disk.stats.prefetches == 1
    assert torch.equal(store.get(("k", 0)), values[0])
    assert disk.stats.prefetch_hits + disk.stats.late_waits == 1
    store.put(("k", 3), values[3])  # nothing wanted any more: no staging
    assert disk.stats.prefetches == 1
    store.close()


def test_bench_reuse_smoke(tmp_path):
    """The benchmark script runs and its figures hang together (not a timing test)."""
    import json
    import subprocess
    import sys
    out = tmp_path / "reuse"
    subprocess.run([sys.executable, str(Path(__file__).parent / "bench_reuse.py"), "--segments", "3", "--window", "2",
                    "--repeats", "1", "--steps", "4", "--out", str(out)], check=True, timeout=300, capture_output=True)
    data = json.loads(out.with_suffix(".json").read_text())
    for disk in ("cold", "latency"):
        s = data["scenarios"][disk]
        assert s["traces_equal_b_c"] and set(s["median_seconds_per_segment"]) == {"a", "b", "c"}
        assert s["median_stall_seconds"]["a"] <= s["median_stall_seconds"]["b"]
    assert "stall hidden" in out.with_suffix(".md").read_text()
