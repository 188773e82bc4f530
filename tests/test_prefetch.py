"""schedule_prefetch: where prefetches go (golden print and an independent rule), the verifier's
rules, and generations over a tiered store that prefetch — still bit-identical, and served early."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from conftest import components, generate
from test_render import static_plan

from edit import EditWanPipeline
from edit.cache import CPUStore, DiskStore, GPUStore, TieredStore
from edit.graph import latest_key
from edit.graph import PREFETCH, Cell, GraphError, Prefetch, RunSpec, Unit, lower, verify
from edit.passes import apply_policy, make_policy, prefetch_lead, regroup, schedule_prefetch

GOLDEN = Path(__file__).parent / "golden"
STEPS = 10


def cells_in_order(graph):
    return [(n.step, n.branch, n.unit) for n in graph.order() if isinstance(n, (Unit, Cell))]


def test_golden_print():
    before = static_plan(steps=3)
    after = verify(schedule_prefetch(before, lead=1))
    assert after.to_text() == (GOLDEN / "prefetch_oddsteps_lead1.txt").read_text()
    assert schedule_prefetch(after) is after  # every load has its prefetch: unchanged
    plain = lower(RunSpec(num_steps=2, timesteps=(900.0, 400.0), num_blocks=2))
    assert schedule_prefetch(plain) is plain  # no loads


@pytest.mark.parametrize("lead", [1, 2, 5])
@pytest.mark.parametrize("make", [
    lambda: static_plan(steps=6),
    lambda: apply_policy(regroup(lower(RunSpec(num_steps=5, timesteps=tuple(range(5, 0, -1)), num_blocks=4,
                                               guidance_scale=5.0)), 2), make_policy("fbcache")),
], ids=["folded", "run-time"])
def test_each_load_gets_one_prefetch_lead_cells_ahead_but_after_its_save(make, lead):
    graph = make()
    after = verify(schedule_prefetch(graph, lead=lead))
    cells = cells_in_order(graph)
    index = {c: i for i, c in enumerate(cells)}
    readers = [c for c in graph.nodes(Cell) if c.mode != "compute"]
    prefetches = after.nodes(Prefetch)
    assert len(prefetches) == len(readers) > 0
    for p in prefetches:
        (load,) = after.consumers(p, kind=PREFETCH)
        here = index[(load.step, load.branch, load.unit)]
        last_save = max(index[c.cell] for c in graph.nodes(Cell)  # the latest earlier write of the unit's key
                        if c.mode != "reuse" and (c.branch, c.unit) == (load.branch, load.unit) and index[c.cell] < here)
        assert p.issue == cells[max(here - lead, last_save + 1)] and p.key == latest_key(load)
        order = after.order()
        assert order.index(p) < order.index(load)
        issue_nodes = [n for n in order if (getattr(n, "step", None), getattr(n, "branch", None),
                                           getattr(n, "unit", None)) == p.issue and not isinstance(n, Prefetch)]
        assert order.index(p) < order.index(issue_nodes[0])  # runs before the issuing cell starts


def test_verifier_rules():
    good = verify(schedule_prefetch(static_plan(steps=3)))
    p = good.nodes(Prefetch)[0]
    (load,) = good.consumers(p, kind=PREFETCH)

    orphan = good.copy()
    orphan.remove_edge(p, load)
    with pytest.raises(GraphError, match=f"%{p.name}: a prefetch needs exactly one prefetch edge"):
        verify(orphan)

    late = good.copy()
    late.replace_node(p, attrs.evolve(p, issue=(load.step + 1, load.branch, load.unit)))
    with pytest.raises(GraphError, match=f"%{p.name}: issued at s{load.step + 1}.* not before its read"):
        verify(late)

    early = good.copy()  # before the step that writes the residual it would stage
    early.replace_node(p, attrs.evolve(p, issue=(0, "cond", 0)))
    with pytest.raises(GraphError, match=f"%{p.name}: issued at s0.cond.u0, before %s0.{p.branch}.u{p.unit} writes"):
        verify(early)


def test_lead_and_bad_input():
    assert prefetch_lead(64 << 20, 2e9, 0.01) == 4  # 33.6 ms of transfer behind 10 ms cells
    assert prefetch_lead(1, 1e9, 1.0) == 1
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s"):
        prefetch_lead(1, 0, 1.0)
    with pytest.raises(ValueError, match="lead: expected an int >= 1"):
        schedule_prefetch(static_plan(), lead=0)
    with pytest.raises(ValueError, match="prefetch: expected .auto., None, a dict of tier costs or an int >= 1"):
        EditWanPipeline(**components()).enable_cache("fbcache", prefetch=0)


@pytest.fixture(scope="module")
def unbounded():
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2, num_inference_steps=STEPS)
    out = generate(pipe, num_inference_steps=STEPS)
    assert set("".join(pipe.cache.stats.trace.values())) == {"C", "S"}
    return out


@pytest.mark.parametrize("lead", [1, 3])
def test_prefetching_tiered_generation_is_exact_and_served_early(tmp_path, unbounded, lead):
    store = TieredStore([(GPUStore(), 3000), (CPUStore(), 3000), (DiskStore(tmp_path), None)])
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2, num_inference_steps=STEPS, store=store,
                      prefetch=lead)
    out = generate(pipe, num_inference_steps=STEPS)
    assert torch.equal(out, unbounded)
    stats = pipe.cache.stats
    assert stats.recomputed == 0
    if lead == 1:  # reads served by a prefetch (with lead 3 it is issued while the entry is still on
        # tier 0, where there is nothing to stage, and the entry spills to disk afterwards)
        assert stats.store["prefetches"] > 0 and stats.store["prefetch_hits"] > 0
    assert any(isinstance(n, Prefetch) for n in pipe.compile(num_inference_steps=STEPS, height=32, width=48,
                                                              num_frames=9).nx.nodes)
    store.close()


def test_a_store_without_prefetch_still_works(unbounded):
    class PutGet:
        def __init__(self):
            self.data = {}

        def put(self, key, tensor):
            self.data[key] = tensor.clone()
            return True

        def get(self, key):
            return self.data.get(key)

        def clear(self):
            self.data.clear()

    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", rel_l1_thresh=0.08, granularity=2, num_inference_steps=STEPS, store=PutGet(),
                      prefetch=1)
    assert torch.equal(generate(pipe, num_inference_steps=STEPS), unbounded)
