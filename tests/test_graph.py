"""The IR: lowering golden print, summary grid, RunSpec validation and the verifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from edit.graph import (DATA, Embed, Graph, GraphError, Head, Input, Output, RunSpec, Unit, Update, lower,
                        unit_ranges, verify)

GOLDEN = Path(__file__).parent / "golden"
TIMESTEPS = (999.0, 666.0, 333.0)


def spec3(**kw) -> RunSpec:
    return RunSpec(num_steps=3, timesteps=TIMESTEPS, num_blocks=4, **kw)


def test_lowered_3_step_cfg_graph_matches_golden_text():
    text = verify(lower(spec3())).to_text()
    assert text == (GOLDEN / "lower_3step_cfg.txt").read_text()


def test_lowering_is_deterministic_and_shaped_like_the_run():
    g = lower(spec3())
    assert g.to_text() == lower(spec3()).to_text()
    assert len(g.nodes(Unit)) == 3 * 2 and len(g.nodes(Head)) == 6 and len(g.nodes(Update)) == 3
    no_cfg = lower(spec3(branches=("cond",), guidance_scale=1.0))
    assert {n.branch for n in no_cfg.nodes(Embed)} == {"cond"} and "guide" not in no_cfg.to_text()


def test_summary_grid_is_step_by_branch():
    lines = lower(spec3()).summary().splitlines()
    assert lines[0].split() == ["step", "cond", "uncond"]
    assert [line.split() for line in lines[1:]] == [[str(s), "C", "C"] for s in range(3)]


@pytest.mark.parametrize("granularity, ranges", [
    ("stack", ((0, 4),)),
    ("per_block", ((0, 1), (1, 2), (2, 3), (3, 4))),
    (3, ((0, 3), (3, 4))),
])
def test_unit_ranges(granularity, ranges):
    assert unit_ranges(granularity, 4) == ranges
    assert [n.blocks for n in lower(spec3(granularity=granularity)).find(Unit, step=0, branch="cond")] == list(ranges)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_steps=0, timesteps=()), "num_steps"),
    (dict(num_steps=2, timesteps=(1.0,)), "timesteps"),
    (dict(num_steps=1, timesteps=(1.0,), branches=("uncond",)), "branches"),
    (dict(num_steps=1, timesteps=(1.0,), granularity=0), "granularity"),
    (dict(num_steps=1, timesteps=(1.0,), granularity=5), "granularity"),
    (dict(num_steps=1, timesteps=(1.0,), granularity="blocks"), "granularity"),
])
def test_run_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunSpec(num_blocks=4, **kwargs)


def test_verify_rejects_a_cycle_naming_a_node():
    g = lower(spec3())
    u0 = g.find(Unit, step=1, branch="cond")[0]
    g.add_edge(u0, g.find(Embed, step=0, branch="cond")[0], kind="prefetch")
    with pytest.raises(GraphError, match=r"cycle through %s\d\.cond\.(u0|embed|update|head)"):
        verify(g)


def test_verify_rejects_a_consumer_without_producer():
    g = lower(spec3())
    head = g.find(Head, step=2, branch="uncond")[0]
    g.nx.remove_edge(g.find(Unit, step=2, branch="uncond")[0], head)
    with pytest.raises(GraphError, match=r"%s2\.uncond\.head: input 'hidden' has no producer"):
        verify(g)


def test_verify_rejects_a_dangling_edge():
    g = lower(spec3())
    ghost = Unit(7, "cond", 0, (0, 4))
    g.nx.add_edge(g.find(Embed, step=0, branch="cond")[0], ghost, kind=DATA, port="hidden")
    with pytest.raises(GraphError, match=r"dangling edge %s0\.cond\.embed -> %s7\.cond\.u0"):
        verify(g)


def test_verify_rejects_unknown_and_duplicate_ports():
    g = lower(spec3())
    out = g.find(Output)[0]
    g.add_edge(g.find(Input, value="latents")[0], out, port="latents")
    with pytest.raises(GraphError, match=r"%out: input 'latents' has 2 producers"):
        verify(g)
    g = lower(spec3())
    g.add_edge(g.find(Input, value="latents")[0], g.find(Head, step=0, branch="cond")[0], port="bogus")
    with pytest.raises(GraphError, match=r"%s0\.cond\.head: unknown input port 'bogus'"):
        verify(g)


def test_graph_api_rejects_bad_edges():
    g = Graph()
    a = g.add_node(Input("latents"))
    with pytest.raises(ValueError, match="dst"):
        g.add_edge(a, Output(), port="latents")
    with pytest.raises(ValueError, match="kind"):
        g.add_edge(a, a, kind="teleport")
    with pytest.raises(TypeError, match="node"):
        g.add_node("not a record")
