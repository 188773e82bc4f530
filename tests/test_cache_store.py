"""End to end: cached generations whose residuals live in tiered, evicting and damaged stores.

A store may move residuals anywhere (GPU -> CPU -> disk) without changing a single bit of the
output, and may lose them (eviction, a corrupted file) at the cost of recomputing exactly those
units. Each test checks that its store really did the thing under test (spills, disk reads,
evictions, a lost file), so it cannot pass on a store that quietly kept everything on tier 0.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import components, generate

from edit import EditWanPipeline
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore

STEPS = 10
IDENTITY = [1.0, 0.0]  # TeaCache with poly(x) = x: thresholds in raw relative-L1 units on the tiny model
# Thresholds that give a mix of computed and reused units on the tiny model (see test_cache.py).
SETTINGS = {"fbcache": dict(rel_l1_thresh=0.08), "teacache": dict(rel_l1_thresh=0.5, coefficients=IDENTITY)}


def cached_run(policy: str, granularity, store, **kwargs):
    """A fresh pipeline with `policy` over `store`; returns (pipe, latents)."""
    pipe = EditWanPipeline(**components())
    fold = kwargs.pop("fold", True)
    pipe.enable_cache(policy, granularity=granularity, store=store, num_inference_steps=STEPS, fold=fold,
                      **SETTINGS[policy])
    return pipe, generate(pipe, num_inference_steps=STEPS, **kwargs)


def mixed(trace: dict) -> bool:
    chars = "".join(trace.values())
    return "C" in chars and "S" in chars


@pytest.fixture(scope="module")
def uncached():
    return generate(EditWanPipeline(**components()), num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def unbounded():
    """(policy, granularity) -> (trace, latents, residual count, bytes per residual) with a plain GPUStore."""
    results = {}

    def get(policy, granularity):
        if (policy, granularity) not in results:
            store = GPUStore()
            pipe, out = cached_run(policy, granularity, store)
            assert pipe.cache.stats.recomputed == 0 and mixed(pipe.cache.stats.trace)
            results[policy, granularity] = (pipe.cache.stats.trace, out, len(store), store.nbytes // len(store))
        return results[policy, granularity]
    return get


@pytest.mark.parametrize("policy, granularity", [("fbcache", "per_block"), ("teacache", 2), ("fbcache", 2)])
def test_tiny_budget_tiered_store_equals_unbounded_gpu_store(tmp_path, uncached, unbounded, policy, granularity):
    trace, expected, n_keys, residual = unbounded(policy, granularity)
    assert not torch.equal(expected, uncached)  # reused residuals shape the output, so a wrong read would show
    # Room for one residual on the GPU tier and one on the CPU tier: every other residual lives in a file.
    store = TieredStore([(GPUStore(), residual), (CPUStore(), residual), (DiskStore(tmp_path / "disk"), None)])
    pipe, out = cached_run(policy, granularity, store)

    assert torch.equal(out, expected)
    assert pipe.cache.stats.trace == trace and pipe.cache.stats.recomputed == 0
    stats = store.stats
    gpu, cpu, disk = stats.tiers
    assert len(store) == n_keys >= 4 and store.tier_bytes == [residual, residual, (n_keys - 2) * residual]
    assert gpu.spills > 0 and cpu.spills > 0  # residuals went GPU -> CPU -> disk ...
    assert disk.hits > 0 and cpu.promotions + gpu.promotions == disk.hits + cpu.hits  # ... and were read back
    assert stats.misses == stats.evictions == stats.rejected == 0 and disk.lost == 0
    files = sorted(f for f in store.stores[2].folder.iterdir() if f.suffix == ".safetensors")
    assert len(files) == disk.entries == n_keys - 2
    assert sorted(str(store.stores[2].path(k)) for k in store.stores[2].keys()) == [str(f) for f in files]
    store.close()
    assert not any((tmp_path / "disk").iterdir()) and store.nbytes == 0


@pytest.mark.parametrize("policy, granularity", [("fbcache", "per_block"), ("teacache", 2)])
def test_evicting_store_recomputes_every_missing_residual(uncached, unbounded, policy, granularity):
    """Every step touches each unit's key once, in the same order, and the tiers together are LRU:
    with room for one residual fewer than there are keys, every reuse finds its residual evicted.
    Recomputing a unit is computing it, so the output must be exactly the uncached one."""
    _, _, n_keys, residual = unbounded(policy, granularity)
    store = TieredStore([(GPUStore(), residual), (CPUStore(), (n_keys - 2) * residual)])
    pipe, out = cached_run(policy, granularity, store)

    stats = pipe.cache.stats
    assert stats.skipped > 0 and "S" in "".join(stats.trace.values())
    assert stats.recomputed == stats.skipped == sum(t.count("S") for t in stats.trace.values())
    assert torch.isfinite(out).all() and torch.equal(out, uncached)
    s = store.stats
    assert s.hits == 0 and s.misses == stats.recomputed  # a Load happens only on a reuse path
    assert s.tiers[1].evictions > 0 and len(store) == n_keys - 1
    assert all(b <= budget for b, budget in zip(store.tier_bytes, store.budgets))


def test_corrupted_disk_residual_is_recomputed_and_the_rest_reused(tmp_path, uncached, unbounded):
    """A residual file damaged mid-run reads as a miss: that one unit is recomputed at that one step,
    every other reuse still comes from the store. The oracle: an unbounded run whose decision for the
    victim at that step is forced to compute by a hook."""
    policy, granularity = "teacache", "per_block"
    trace, expected, _, residual = unbounded(policy, granularity)
    first_reuse = min(t.index("S") for t in trace.values())
    assert all(t[first_reuse] == "S" for t in trace.values())
    store = TieredStore([(GPUStore(), residual), (CPUStore(), residual), (DiskStore(tmp_path), None)])
    disk, damaged = store.stores[2], []

    def corrupt(pipe, step, timestep, kwargs):
        if step == first_reuse - 1:  # the next step reads every unit's residual
            victim = min(disk.keys())
            path = disk.path(victim)
            data = bytearray(path.read_bytes())
            data[-1] ^= 0x01  # one bit of the payload
            path.write_bytes(bytes(data))
            damaged.append(victim)
        return {}

    pipe, out = cached_run(policy, granularity, store, fold=False, callback_on_step_end=corrupt)
    assert len(damaged) == 1
    _, _, _, branch, unit = damaged[0]  # (owner, model, generation, branch, unit)
    assert pipe.cache.stats.recomputed == 1 and pipe.cache.stats.trace == trace
    assert store.stats.tiers[2].lost == 1 and disk.stats.errors == 1 and store.stats.misses == 1
    assert len(store) == len(trace) and damaged[0] in store  # the recompute stored a fresh residual

    oracle = EditWanPipeline(**components())
    oracle.enable_cache(policy, granularity=granularity, fold=False, **SETTINGS[policy])
    oracle.cache.add_hook("after_decision", lambda ev: True if (ev.step, ev.branch, ev.unit) ==
                          (first_reuse, branch, unit) else None)
    reference = generate(oracle, num_inference_steps=STEPS)
    assert oracle.cache.stats.trace[(branch, unit)][first_reuse] == "C"
    assert torch.equal(out, reference)
    assert not torch.equal(out, expected) and not torch.equal(out, uncached)
    store.close()


def test_store_stats_appear_in_cache_stats(tmp_path):
    """pipe.cache.stats.store is the store's own snapshot at the end of each run (cumulative over the
    store's life), in as_dict() and in the printed table; it agrees with the tier stores themselves."""
    store = TieredStore([(GPUStore(), 2000), (CPUStore(), 2000), (DiskStore(tmp_path), None)])
    pipe, _ = cached_run("fbcache", "stack", store)
    first = pipe.cache.stats.store
    assert first == store.stats.as_dict() == pipe.cache.stats.as_dict()["store"]
    assert [t["name"] for t in first["tiers"]] == ["0:GPUStore", "1:CPUStore", "2:DiskStore"]
    assert first["tiers"][2]["entries"] == 0  # one generation's two residuals fit the upper tiers

    owner = pipe.cache.residuals.owner  # every key is in the cache's own namespace
    on_disk = []
    pipe.cache.set_generation(1)  # fresh keys: generation 0's residuals are now the least recent
    generate(pipe, num_inference_steps=STEPS,
             callback_on_step_end=lambda p, s, t, kw: on_disk.append(sorted(store.stores[2].keys())) or {})
    # during the run generation 0's residuals spilled to the disk tier; at its end they were dropped
    # (no later run reads an earlier generation's latest residuals)
    assert on_disk[-1] == [(owner, "transformer", 0, "cond", 0), (owner, "transformer", 0, "uncond", 0)]
    stats = pipe.cache.stats
    snap = stats.store
    assert snap == store.stats.as_dict() and snap["puts"] > first["puts"] and snap["hits"] > first["hits"]
    for tier, inner in zip(snap["tiers"], store.stores):
        assert (tier["nbytes"], tier["entries"]) == (inner.nbytes, len(inner)) == (inner.stats.nbytes,
                                                                                inner.stats.entries)
    assert snap["tiers"][2]["entries"] == 0 and snap["tiers"][0]["spills"] > 0 and snap["tiers"][1]["spills"] > 0
    assert snap["nbytes"] == store.nbytes == sum(store.tier_bytes) and snap["entries"] == len(store) == 2
    json.dumps(stats.as_dict())

    table = str(stats)
    assert f"store: 2 entries, {store.nbytes:,} B" in table
    for tier in snap["tiers"]:
        line = next(line for line in table.splitlines() if tier["name"] in line)
        assert f"{tier['nbytes']:,} B" in line and f"spills {tier['spills']}" in line and f"hits {tier['hits']}" in line
    assert "unbounded" in table and "2,000 B" in table
    store.close()

    plain = EditWanPipeline(**components())
    plain.enable_cache("fbcache", **SETTINGS["fbcache"])  # the default store: an unbounded GPUStore
    generate(plain, num_inference_steps=STEPS)
    default = plain.cache.stats.store
    assert default == plain.cache.store.stats.as_dict() and default["entries"] == 2 and default["hits"] > 0
    assert "store: 2 entries" in str(plain.cache.stats)


def test_store_stats_are_live_during_a_run_and_frozen_after_it():
    """A step-end callback sees the store's counters grow step by step; after the call, the stats
    of that run keep the snapshot taken at its end even when the store is used again."""
    store = GPUStore()
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(pipe.cache.stats.store["puts"])
        return kwargs

    pipe, _ = cached_run("fbcache", "stack", store, callback_on_step_end=callback)
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] > seen[0]  # grows as units compute
    final = pipe.cache.stats.store
    assert final == store.stats.as_dict() and final["puts"] >= seen[-1]
    store.put(("x",), torch.zeros(4))
    assert pipe.cache.stats.store == final != store.stats.as_dict()
