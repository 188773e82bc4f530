"""Graphviz views of a plan: `to_dot` (the DOT source, deterministic) and `render` (a file).

Three levels of detail, so a 50-step x 40-block plan stays readable:

- ``"nodes"``: every node and edge of the graph;
- ``"units"``: each (step, branch, unit) cell — its decision, compute path, reuse path, save and
  load — drawn as one box coloured by its state (C computed, S reused, R reused from an earlier
  generation, ? decided at run time), with the reuse edges between cells;
- ``"steps"``: one box per (step, branch) listing its cells (e.g. ``CCSC``), plus reuse edges.

Clusters group each step, and each branch inside it. `steps=` draws a subset of the steps.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

from edit.graph.nodes import (DATA, PREFETCH, REUSE, REUSE_MODE, Cell, Embed, Guide, Head, Input, Node, Output,
                              Prefetch, Probe, Unit, Update)
from edit.graph.text import cell_state, cell_states

if TYPE_CHECKING:
    from edit.graph.core import Graph

LEVELS = ("nodes", "units", "steps")
FORMATS = ("dot", "svg", "png", "pdf")

#: Fill colour and line style of a cell by state.
CELL_STYLE = {"C": ("#b7e4c7", "solid"), "S": ("#e9ecef", "dashed"), "R": ("#d0bfff", "dashed"),
              "?": ("#ffd8a8", "solid")}
EDGE_STYLE = {DATA: {},
              REUSE: dict(color="#1c7ed6", style="dashed", constraint="false"),
              PREFETCH: dict(color="#9c36b5", style="dashed", constraint="false")}
NODE_STYLE: dict[type, dict[str, str]] = {
    Input: dict(shape="parallelogram"), Output: dict(shape="parallelogram"),
    Embed: dict(shape="box", style="rounded,filled", fillcolor="#d0ebff"),
    Head: dict(shape="box", style="rounded,filled", fillcolor="#d0ebff"),
    Probe: dict(shape="box", style="filled", fillcolor="#fff3bf"),
    Unit: dict(shape="box", style="filled", fillcolor=CELL_STYLE["C"][0]),
    Prefetch: dict(shape="cds", style="filled", fillcolor="#eebefa"),
    Guide: dict(shape="ellipse"), Update: dict(shape="ellipse"),
}
_CELL_KINDS = (Unit, Cell)  # a Prefetch stays apart: it runs in another cell


def _check(graph: Any, level: str, steps: Iterable[int] | None) -> set[int] | None:
    from edit.graph.core import Graph

    if not isinstance(graph, Graph):
        raise TypeError(f"graph: expected an edit.graph.Graph, got {type(graph).__name__}")
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if steps is None:
        return None
    try:
        chosen = {int(s) for s in steps}
    except (TypeError, ValueError):
        raise TypeError("steps: expected an iterable of step indices (e.g. range(0, 50, 10))") from None
    known = {n.step for n in graph.nx.nodes if getattr(n, "step", None) is not None}
    unknown = sorted(chosen - known)
    if unknown:
        raise ValueError(f"steps: {unknown} not in this plan (steps {min(known, default=0)}..{max(known, default=-1)})")
    return chosen


def _display_key(node: Node, level: str) -> tuple:
    """Which drawn node `node` becomes at `level` (several graph nodes may share one)."""
    step, branch = getattr(node, "step", None), getattr(node, "branch", None)
    if level == "units" and isinstance(node, _CELL_KINDS):
        return ("cell", step, branch, node.unit)
    if level == "steps" and branch is not None:
        return ("branch", step, branch)
    if level == "steps" and isinstance(node, (Guide, Update)):
        return ("update", step)
    return ("node", node)


def _cluster_of(key: tuple) -> tuple:
    if key[0] == "node":
        node = key[1]
        return getattr(node, "step", None), getattr(node, "branch", None)
    if key[0] == "update":
        return key[1], None
    return key[1], key[2]


def _ident(key: tuple) -> str:
    if key[0] == "node":
        return key[1].name
    return ".".join(str(part) for part in key)


def _attributes(key: tuple, members: list[Node], cells: dict[tuple[int, str, int], str]) -> dict[str, str]:
    kind = key[0]
    if kind == "node":
        node = key[1]
        params = node.params()
        attrs = {"label": f"{node.name}\\n{node.op}" + (f" {params}" if params and len(params) < 40 else "")}
        attrs.update(NODE_STYLE.get(type(node), {}))
        if isinstance(node, Cell):
            fill, line = CELL_STYLE[cell_state(node)]
            attrs.update(shape="box", style=f"filled,{line}", fillcolor=fill)
        return attrs
    if kind == "cell":
        _, step, branch, unit = key
        state = cells.get((step, branch, unit), "C")
        fill, line = CELL_STYLE[state]
        blocks = next((m.blocks for m in members if isinstance(m, (Unit, Cell))), None)
        span = f" blocks {blocks[0]}:{blocks[1]}" if blocks else ""
        return dict(label=f"u{unit}{span}\\n{state}", shape="box", style=f"filled,{line}", fillcolor=fill)
    if kind == "branch":
        _, step, branch = key
        states = "".join(state for (s, b, _), state in sorted(cells.items()) if s == step and b == branch)
        fill, line = CELL_STYLE["S" if states and set(states) <= {"S", "R"} else "?" if "?" in states else "C"]
        return dict(label=f"s{step} {branch}\\n{states}", shape="box", style=f"filled,{line}", fillcolor=fill)
    return dict(label=f"s{key[1]} guide+update", shape="ellipse")


def to_dot(graph: Graph, *, level: str = "units", steps: Iterable[int] | None = None) -> graphviz.Digraph:
    """The plan as a graphviz `Digraph` (`.source` is the DOT text); see the module docstring."""
    chosen = _check(graph, level, steps)
    cells = cell_states(graph)
    members: dict[tuple, list[Node]] = {}
    order = graph.order()
    rank = {node: i for i, node in enumerate(order)}
    for node in order:
        step = getattr(node, "step", None)
        if chosen is not None and step is not None and step not in chosen:
            continue
        members.setdefault(_display_key(node, level), []).append(node)
    drawn = {node: key for key, nodes in members.items() for node in nodes}
    edges = _edges(graph, level, drawn, rank)
    if chosen is not None:  # inputs/output whose steps were left out would float unconnected
        linked = {end for a, b, _ in edges for end in (a, b)}
        members = {k: v for k, v in members.items() if _cluster_of(k)[0] is not None or _ident(k) in linked}

    dot = graphviz.Digraph(name="plan", graph_attr=dict(rankdir="TB", fontname="Helvetica", compound="true"),
                           node_attr=dict(fontname="Helvetica", fontsize="10"), edge_attr=dict(fontsize="8"))
    if graph.spec is not None:
        spec = graph.spec
        dot.attr(label=f"{spec.num_steps} steps, {spec.num_blocks} blocks, granularity {spec.granularity}, "
                       f"generation {spec.generation} (level {level})", labelloc="t")
    clusters: dict[tuple, list[tuple]] = {}
    for key in members:
        clusters.setdefault(_cluster_of(key), []).append(key)
    for step in sorted({s for s, _ in clusters if s is not None}):
        with dot.subgraph(name=f"cluster_s{step}") as step_graph:
            step_graph.attr(label=f"step {step}", style="rounded", color="#adb5bd")
            for (s, branch), keys in clusters.items():
                if s != step:
                    continue
                if branch is None:
                    for key in keys:
                        step_graph.node(_ident(key), **_attributes(key, members[key], cells))
                    continue
                with step_graph.subgraph(name=f"cluster_s{step}_{branch}") as branch_graph:
                    branch_graph.attr(label=branch, style="dashed", color="#ced4da")
                    for key in keys:
                        branch_graph.node(_ident(key), **_attributes(key, members[key], cells))
    for key in clusters.get((None, None), []):
        dot.node(_ident(key), **_attributes(key, members[key], cells))
    for a, b, kind in edges:
        dot.edge(a, b, **EDGE_STYLE.get(kind, {}))
    return dot


def _edges(graph: Graph, level: str, drawn: dict[Node, tuple], rank: dict[Node, int]) -> list[tuple[str, str, str]]:
    """(source id, destination id, kind) between drawn nodes, deduplicated, in execution order."""
    # At the coarse levels the text embeddings feed every step: draw those edges into the first step only.
    first = min((n.step for n in drawn if getattr(n, "step", None) is not None), default=None)
    edges = [(src, dst, data) for src, dst, data in graph.nx.edges(data=True) if src in drawn and dst in drawn]
    for cell in [n for n in drawn if isinstance(n, Cell) and n.mode != "compute"]:  # reuse: from the residual's writer
        source = (graph.cell_at(cell.source, cell.branch, cell.unit, cell.model) if cell.mode == REUSE_MODE
                  and cell.source is not None else graph.latest_writer(cell))
        if source is not None and source in drawn:
            edges.append((source, cell, {"kind": REUSE, "port": None}))
    out: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for src, dst, data in sorted(edges, key=lambda e: (rank[e[1]], rank[e[0]], e[2]["kind"], e[2].get("port") or "")):
        if level != "nodes" and isinstance(src, Input) and getattr(dst, "step", first) != first:
            continue
        edge = (_ident(drawn[src]), _ident(drawn[dst]), data["kind"])
        if edge[0] != edge[1] and edge not in seen:
            seen.add(edge)
            out.append(edge)
    return out


def render(graph: Graph, path: str | Path, *, level: str = "units", steps: Iterable[int] | None = None) -> Path:
    """Write the plan to `path` (.dot, .svg, .png or .pdf) and return the file written.

    The DOT source is always written next to it (`path` with the suffix `.dot`). Without the
    graphviz `dot` binary only the source is written, with a warning saying so, and that path is
    returned.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"path: expected a file ending in {', '.join('.' + f for f in FORMATS)}, got {str(path)!r}")
    source = to_dot(graph, level=level, steps=steps).source
    dot_path = path.with_suffix(".dot")
    dot_path.write_text(source)
    if fmt == "dot":
        return dot_path
    binary = shutil.which("dot")
    if binary is None:
        warnings.warn(f"render: graphviz `dot` not found on PATH; wrote the DOT source {dot_path} only "
                      f"(install graphviz, or run `dot -T{fmt} {dot_path} -o {path}` elsewhere)", stacklevel=2)
        return dot_path
    result = subprocess.run([binary, f"-T{fmt}", str(dot_path), "-o", str(path)], capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"render: dot failed ({result.returncode}): {result.stderr.strip()[:500]}")
    return path
