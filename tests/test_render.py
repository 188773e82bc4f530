"""Graphviz views of a plan: golden DOT source, what each level draws, the steps filter, files, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import edit.graph.draw as draw_module
from edit.graph import Cell, Input, RunSpec, lower, render, to_dot, verify
from edit.passes import apply_policy, make_policy, regroup, set_cells

GOLDEN = Path(__file__).parent / "golden"


def static_plan(steps=4, blocks=4, granularity=2, branches=("cond", "uncond")):
    """A static schedule: every unit reuses on odd steps (set with the public editing API)."""
    spec = RunSpec(num_steps=steps, timesteps=tuple(float(1000 - 100 * i) for i in range(steps)), num_blocks=blocks,
                   branches=branches, guidance_scale=5.0 if len(branches) == 2 else 1.0)
    return verify(set_cells(regroup(lower(spec), granularity), "reuse", steps=range(1, steps, 2)))


def runtime_plan():
    spec = RunSpec(num_steps=2, timesteps=(900.0, 400.0), num_blocks=4, branches=("cond",), guidance_scale=1.0)
    return verify(apply_policy(regroup(lower(spec), 2), make_policy("fbcache")))


def node_ids(source: str) -> list[str]:
    """Names of the node statements in a DOT source."""
    ids = re.findall(r'^\t+"?([^"\s]+)"? \[', source, flags=re.M)
    return [i for i in ids if i not in ("graph", "node", "edge")]  # not the default-attribute statements


def edges(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if " -> " in line]


def test_units_level_golden():
    assert to_dot(static_plan(steps=3), level="units").source == (GOLDEN / "render_units_oddsteps.dot").read_text()


def test_nodes_level_draws_every_node_and_edge_once():
    graph = runtime_plan()
    source = to_dot(graph, level="nodes").source
    assert sorted(node_ids(source)) == sorted(n.name for n in graph)
    drawn_reuse = [e for e in edges(source) if "#1c7ed6" in e]  # reuse: from the last writer to each deciding cell
    assert len(edges(source)) == len({(u, v, d["kind"]) for u, v, d in graph.nx.edges(data=True)}) + len(drawn_reuse)
    assert sorted(drawn_reuse) == sorted(f'"s0.cond.u{u}" -> "s1.cond.u{u}" [color="#1c7ed6" constraint=false '
                                         'style=dashed]' for u in (0, 1))


def test_units_level_one_box_per_cell_coloured_by_state():
    graph = static_plan(steps=4)
    source = to_dot(graph, level="units").source
    cells = [i for i in node_ids(source) if i.startswith("cell.")]
    assert len(cells) == 4 * 2 * 2  # steps x branches x units
    for step in range(4):
        state = "S" if step % 2 else "C"
        for branch in ("cond", "uncond"):
            for unit in (0, 1):
                line = next(line for line in source.splitlines() if f'"cell.{step}.{branch}.{unit}" [' in line)
                assert f"\\n{state}\"" in line and (("dashed" in line) == (state == "S"))
    # one reuse edge per reusing cell, drawn from the cell whose residual it reads
    reuse = {(c.source, c.step, c.branch, c.unit) for c in graph.nodes(Cell) if c.mode == "reuse"}
    assert all(source_step == step - 1 for source_step, step, _, _ in reuse)
    assert len([e for e in edges(source) if "constraint=false" in e]) == len(reuse) == 2 * 2 * 2


def test_steps_level_stays_small_for_a_long_plan():
    graph = static_plan(steps=50, blocks=40, granularity="per_block")
    source = to_dot(graph, level="steps").source
    ids = node_ids(source)
    assert len(ids) == 50 * 2 + 50 + sum(isinstance(n, Input) for n in graph) + 1  # + inputs and the output
    line = next(line for line in source.splitlines() if '"branch.3.cond" [' in line)
    assert "\\n" + "S" * 40 in line
    assert len(graph) > 20 * len(ids)


def test_steps_filter():
    graph = static_plan(steps=4)
    source = to_dot(graph, level="nodes", steps=[0, 2]).source
    names = node_ids(source)
    assert any(n.startswith("s2.") for n in names) and not any(n.startswith(("s1.", "s3.")) for n in names)
    assert "out" not in names and "in.latents" in names  # the output's producer (s3.update) is not drawn
    assert "out" in node_ids(to_dot(graph, level="nodes", steps=[3]).source)
    with pytest.raises(ValueError, match=r"steps: \[7\] not in this plan"):
        to_dot(graph, steps=[7])
    with pytest.raises(TypeError, match="steps"):
        to_dot(graph, steps=["x"])


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs the graphviz dot binary")
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_render_writes_the_image_and_its_source(tmp_path, suffix):
    out = render(static_plan(), tmp_path / f"plan.{suffix}", level="units")
    assert out == tmp_path / f"plan.{suffix}" and out.stat().st_size > 0
    assert (tmp_path / "plan.dot").read_text() == to_dot(static_plan(), level="units").source
    data = out.read_bytes()
    assert (b"<svg" in data and b"cell.1.cond.0" in data) if suffix == "svg" else data.startswith(b"\x89PNG")


def test_render_without_dot_writes_the_source_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(draw_module.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="`dot` not found"):
        out = render(static_plan(), tmp_path / "plan.svg")
    assert out == tmp_path / "plan.dot" and out.read_text().startswith("digraph plan {")
    assert not (tmp_path / "plan.svg").exists()


@pytest.mark.parametrize("call, error, match", [
    (lambda g, p: render(g, p / "plan.jpg"), ValueError, r"path: expected a file ending in \.dot"),
    (lambda g, p: to_dot(g, level="blocks"), ValueError, "level: expected one of nodes, units, steps"),
    (lambda g, p: to_dot("plan"), TypeError, "graph: expected an edit.graph.Graph"),
])
def test_bad_input(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(static_plan(), tmp_path)
