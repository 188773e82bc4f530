"""Graphviz views of a plan: golden DOT source, what each level draws, the legend, cond left of
uncond in every step (read from the laid-out SVG), a run's trace as colours, files, errors."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import edit.graph.draw as draw_module
from edit.graph import Input, Plan, Prefetch, RunSpec, lower, render, to_dot, verify
from edit.graph.draw import CELL_STYLE, RUNTIME_BORDER
from edit.passes import apply_policy, make_policy, regroup, schedule_prefetch, set_cells

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="needs the graphviz `dot` binary to lay out the SVG (apt install graphviz)")


def static_plan(steps=4, blocks=4, granularity=2, branches=("cond", "uncond")):
    """A static schedule: every unit reuses on odd steps (set with the public editing API)."""
    spec = RunSpec(num_steps=steps, timesteps=tuple(float(1000 - 100 * i) for i in range(steps)), num_blocks=blocks,
                   branches=branches, guidance_scale=5.0 if len(branches) == 2 else 1.0)
    return verify(set_cells(regroup(lower(spec), granularity), "reuse", steps=range(1, steps, 2)))


def runtime_plan(branches=("cond",), steps=2):
    spec = RunSpec(num_steps=steps, timesteps=tuple(float(900 - 100 * i) for i in range(steps)), num_blocks=4,
                   branches=branches, guidance_scale=5.0 if len(branches) == 2 else 1.0)
    return verify(apply_policy(regroup(lower(spec), 2), make_policy("fbcache")))


#: What a run of `runtime_plan(CFG, 4)` might have done: step 0 computes (a unit's first step
#: always does); later cells computed, reused, or reused but found the store empty.
TRACE = {(0, "cond", 0): "C", (0, "cond", 1): "C", (0, "uncond", 0): "C", (0, "uncond", 1): "C",
         (1, "cond", 0): "S", (1, "cond", 1): "S", (1, "uncond", 0): "S", (1, "uncond", 1): "M",
         (2, "cond", 0): "C", (2, "cond", 1): "S", (2, "uncond", 0): "C", (2, "uncond", 1): "C",
         (3, "cond", 0): "S", (3, "cond", 1): "C", (3, "uncond", 0): "M", (3, "uncond", 1): "S"}
CFG = ("cond", "uncond")


def node_ids(source: str) -> list[str]:
    """Names of the plan's node statements in a DOT source (not the legend's)."""
    ids = re.findall(r'^\t+"?([^"\s]+)"? \[', source, flags=re.M)
    return [i for i in ids if i not in ("graph", "node", "edge", "legend")]


def edges(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if " -> " in line]


def label_of(source: str, ident: str) -> str:
    line = next(line for line in source.splitlines() if re.match(rf'\t+"?{re.escape(ident)}"? \[', line))
    return re.search(r'label="([^"]*)"', line).group(1)


# -- the DOT source -----------------------------------------------------------------------------

def test_units_level_golden():
    assert to_dot(static_plan(steps=3), level="units").source == (GOLDEN / "render_units_oddsteps.dot").read_text()


def test_nodes_level_draws_every_node_and_edge_once():
    graph = runtime_plan()
    source = to_dot(graph, level="nodes").source
    assert sorted(node_ids(source)) == sorted(n.name for n in graph)
    drawn_reuse = [e for e in edges(source) if "#1c7ed6" in e]  # reuse: from the last writer to each deciding cell
    assert len(edges(source)) == len({(u, v, d["kind"]) for u, v, d in graph.nx.edges(data=True)}) + len(drawn_reuse)
    assert sorted(drawn_reuse) == sorted(f'"s0.cond.u{u}" -> "s1.cond.u{u}" [color="#1c7ed6" style=dashed weight=0]'
                                         for u in (0, 1))


def test_nodes_level_draws_prefetches_where_they_are_issued():
    graph = schedule_prefetch(static_plan(steps=3), lead=1)
    source = to_dot(graph, level="nodes").source
    prefetches = graph.nodes(Prefetch)
    assert prefetches and sorted(node_ids(source)) == sorted(n.name for n in graph)
    for p in prefetches:  # inside the cluster of the cell that issues it, an edge to the cell it stages
        cluster = source.split(f"subgraph cluster_s{p.issue[0]}_{p.issue[1]} {{")[1].split("}")[0]
        assert f'"{p.name}" [' in cluster
        assert any(e.startswith(f'"{p.name}" -> "s{p.step}.{p.branch}.u{p.unit}" [color="#9c36b5"')
                   for e in edges(source))


def test_units_level_one_box_per_cell_says_where_a_reuse_reads():
    graph = schedule_prefetch(static_plan(steps=4), lead=1)
    source = to_dot(graph, level="units").source
    cells = [i for i in node_ids(source) if i.startswith("cell.")]
    assert len(cells) == 4 * 2 * 2 and not any(i.endswith(".prefetch") for i in node_ids(source))
    for step in range(4):
        for branch in CFG:
            for unit in (0, 1):
                line = next(line for line in source.splitlines() if f'"cell.{step}.{branch}.{unit}" [' in line)
                label = label_of(source, f"cell.{step}.{branch}.{unit}")
                if step % 2:  # reused: the step it reads, where its prefetch runs, grey and dashed
                    assert f"S from s{step - 1}" in label and "prefetched at s" in label
                    assert CELL_STYLE["S"][0] in line and "dashed" in line
                else:
                    assert label.endswith(" · C") and CELL_STYLE["C"][0] in line and "dashed" not in line
    # summarised, not drawn: no edge climbs back from one step to another but the update's
    assert not [e for e in edges(source) if "#1c7ed6" in e or "#9c36b5" in e]
    cell_edges = [re.findall(r'"cell\.(\d+)\.', e) for e in edges(source)]
    assert all(ends[0] == ends[1] for ends in cell_edges if len(ends) == 2)


def test_steps_level_stays_small_for_a_long_plan():
    graph = static_plan(steps=50, blocks=40, granularity="per_block")
    source = to_dot(graph, level="steps").source
    ids = node_ids(source)
    assert len(ids) == 50 * 2 + 50 + sum(isinstance(n, Input) for n in graph) + 1  # + inputs and the output
    line = next(line for line in source.splitlines() if '"branch.3.cond" [' in line)
    assert 'tooltip="s3 cond: ' + "S" * 40 + '"' in line and "40 S from s2" in line
    assert line.count("<TD BGCOLOR=") == 40
    assert len(graph) > 20 * len(ids)


def test_legend_in_every_level():
    for level in ("nodes", "units", "steps"):
        source = to_dot(static_plan(), level=level).source
        legend = next(line for line in source.splitlines() if line.startswith("\tlegend ["))
        for fill, _, words in CELL_STYLE.values():
            assert fill in legend and words in legend
        assert ("reuse: from the cell whose residual is read" in legend) == (level == "nodes")


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


class FakeStats:
    """Anything with `cell_states()` is taken as a run's stats (the renderer imports no runtime)."""

    def cell_states(self):
        return dict(TRACE)


def test_trace_every_form_draws_the_same():
    graph = runtime_plan(CFG, steps=4)
    rows = {(b, u): "".join(TRACE[(s, b, u)] for s in range(4)) for b in CFG for u in (0, 1)}
    rows_only_s = {k: v.replace("M", "S") for k, v in rows.items()}  # stats.trace has no M (misses are in cell_states)
    source = to_dot(graph, trace=TRACE).source
    assert to_dot(graph, trace=FakeStats()).source == source
    assert to_dot(graph, trace=rows).source == source
    assert to_dot(graph, trace=rows_only_s).source != source
    assert "?" not in "".join(label_of(source, f"cell.{s}.{b}.{u}") for s, b, u in TRACE)
    assert label_of(source, "cell.1.uncond.1").endswith("M (s0 missed)")
    assert label_of(source, "cell.3.uncond.1").endswith("S from s2")  # the latest step that computed
    assert label_of(source, "cell.3.cond.0").endswith("S from s2")


@pytest.mark.parametrize("trace, error, match", [
    ({(9, "cond", 0): "C"}, ValueError, r"trace: cell \(9, 'cond', 0\) is not a cached cell of this plan"),
    ({(1, "cond", 0): "?"}, ValueError, r"trace: cell \(1, 'cond', 0\) has state '\?'"),
    ({"cond": "CS"}, TypeError, r"trace: expected keys \(step, branch, unit\)"),
    ([1, 2], TypeError, "trace: expected CacheStats"),
])
def test_bad_trace(trace, error, match):
    with pytest.raises(error, match=match):
        to_dot(runtime_plan(CFG, steps=4), trace=trace)


# -- the laid-out drawing -----------------------------------------------------------------------

def svg_of(tmp_path, graph, level, **kwargs):
    out = render(graph, tmp_path / f"{level}.svg", level=level, **kwargs)
    return ET.parse(out).getroot()


def groups(root, kind):
    """{title: <g>} of the SVG's nodes or clusters."""
    return {g.find(f"{SVG}title").text: g for g in root.iter(f"{SVG}g") if g.get("class") == kind}


def xs(group) -> list[float]:
    """x coordinates of a group's outline (polygons) and text."""
    out = [float(t.get("x")) for t in group.iter(f"{SVG}text")]
    for poly in group.iter(f"{SVG}polygon"):
        out += [float(p.split(",")[0]) for p in poly.get("points").split()]
    return out


def fills(group) -> list[str]:
    """Fill colours of a node's cell shapes, in drawing order (a strip's squares left to right)."""
    known = {fill for fill, _, _ in CELL_STYLE.values()}
    return [p.get("fill") for p in group.iter(f"{SVG}polygon") if p.get("fill") in known]


@needs_dot
@pytest.mark.parametrize("level, clusters, nodes", [
    # a step cluster around a cluster per branch; a box per cell and per embed/head/guide/update; inputs, output
    ("units", {f"cluster_s{s}" for s in range(4)} | {f"cluster_s{s}_{b}" for s in range(4) for b in CFG},
     4 * (2 * (2 + 2) + 2) + 3 + 1),
    # a cluster per (step, branch) only, so the long edges run between them; every node of the graph
    ("nodes", {f"cluster_s{s}_{b}" for s in range(4) for b in CFG}, None),
    # no clusters: a row per step (cond strip, the step's guide+update, uncond strip); inputs and output
    ("steps", set(), 4 * 3 + 3 + 1),
])
def test_svg_levels_clusters_legend_and_cond_left(tmp_path, level, clusters, nodes):
    graph = schedule_prefetch(static_plan(steps=4), lead=1)
    root = svg_of(tmp_path, graph, level)
    drawn, boxes = groups(root, "node"), groups(root, "cluster")
    assert set(boxes) == clusters
    assert "legend" in drawn and "decided at run time" in "".join(drawn["legend"].itertext())
    assert len(drawn) - 1 == (len(graph) if nodes is None else nodes)
    for step in range(4):
        if level == "steps":
            left, middle, right = drawn[f"branch.{step}.cond"], drawn[f"update.{step}"], drawn[f"branch.{step}.uncond"]
            assert max(xs(left)) < min(xs(middle)) and max(xs(middle)) < min(xs(right))
        else:
            assert max(xs(boxes[f"cluster_s{step}_cond"])) < min(xs(boxes[f"cluster_s{step}_uncond"]))


@needs_dot
def test_svg_steps_level_of_a_long_plan_stays_in_columns(tmp_path):
    root = svg_of(tmp_path, static_plan(steps=50, blocks=40, granularity="per_block"), "steps")
    drawn = groups(root, "node")
    centres = {round((min(xs(drawn[f"update.{s}"])) + max(xs(drawn[f"update.{s}"]))) / 2) for s in range(50)}
    assert max(centres) - min(centres) <= 2, "the steps drift sideways"
    for step in range(50):
        assert max(xs(drawn[f"branch.{step}.cond"])) < min(xs(drawn[f"branch.{step}.uncond"]))
        assert fills(drawn[f"branch.{step}.uncond"]) == [CELL_STYLE["S" if step % 2 else "C"][0]] * 40


@needs_dot
@pytest.mark.parametrize("level", ["units", "steps", "nodes"])
def test_svg_with_a_trace_colours_are_the_trace(tmp_path, level):
    graph = runtime_plan(CFG, steps=4)
    untraced = groups(svg_of(tmp_path, graph, level), "node")
    drawn = groups(svg_of(tmp_path, graph, level, trace=FakeStats()), "node")
    for step in range(4):
        for branch in CFG:
            expect = [CELL_STYLE[TRACE[(step, branch, u)]][0] for u in (0, 1)]
            if level == "steps":
                assert fills(drawn[f"branch.{step}.{branch}"]) == expect
                continue
            for unit in (0, 1):
                ident = f"cell.{step}.{branch}.{unit}" if level == "units" else f"s{step}.{branch}.u{unit}"
                assert fills(drawn[ident]) == [expect[unit]]
                runtime = graph.cell_at(step, branch, unit).mode == "decide"
                outline = [p.get("stroke") for p in drawn[ident].iter(f"{SVG}polygon")]
                assert (RUNTIME_BORDER in outline) == runtime  # run-time cells keep an orange border
                assert fills(untraced[ident]) == [CELL_STYLE["?" if runtime else "C"][0]]


@needs_dot
@pytest.mark.parametrize("suffix", ["svg", "png"])
def test_render_writes_the_image_and_its_source(tmp_path, suffix):
    out = render(static_plan(), tmp_path / f"plan.{suffix}", level="units")
    assert out == tmp_path / f"plan.{suffix}" and out.stat().st_size > 0
    assert (tmp_path / "plan.dot").read_text() == to_dot(static_plan(), level="units").source
    data = out.read_bytes()
    assert (b"<svg" in data and b"cell.1.cond.0" in data) if suffix == "svg" else data.startswith(b"\x89PNG")


def test_plan_render_is_render(tmp_path):
    plan = Plan.from_graph(runtime_plan(CFG, steps=4))
    out = plan.render(tmp_path / "plan.dot", level="steps", steps=range(2), trace=TRACE)
    assert out == tmp_path / "plan.dot"
    assert out.read_text() == to_dot(plan, level="steps", steps=range(2), trace=TRACE).source


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
