"""Graphviz views of a plan: `to_dot` (the DOT source, deterministic) and `render` (a file).

Three levels of detail, so a 50-step x 40-block plan stays readable:

- ``"nodes"``: every node and edge of the graph, reuse edges (blue, from the cell whose residual is
  read) and prefetch edges (purple) included; a prefetch sits where it is issued;
- ``"units"``: each (step, branch, unit) cell — decision, compute path, reuse path, its prefetch —
  as one box coloured by its state; a reused cell says where its residual comes from ("S from s7")
  instead of an edge climbing back through the steps in between;
- ``"steps"``: one row per step: a strip per branch with one coloured square per unit, and the
  step's guide + update between them.

Every drawing has a legend, and cond is left of uncond in every step. With `trace=` (a run's
`CacheStats`, its `cell_states()`, or its `trace`) each cell is drawn as what the run did: computed,
reused, or recomputed because the store missed; cells the policy decided at run time keep an orange
border. At the coarse levels the latents' edge from one update to the next is left out: it runs
parallel to the step's own path and only tangles the drawing. `steps=` draws a subset of the steps.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

from edit.graph.draw_states import TRACE_STATES, _Look, _trace  # noqa: F401  (re-exported)
from edit.graph.draw_style import (CELL_STYLE, EDGE_STYLE, NODE_STYLE, PREFETCH_COLOR, REUSE_COLOR,  # noqa: F401
                                   RUNTIME_BORDER, _cell_look, _legend)
from edit.graph.nodes import DATA, REUSE, REUSE_MODE, Cell, Exchange, Guide, Input, Node, Prefetch, Unit, Update

if TYPE_CHECKING:
    from edit.graph.core import Graph

LEVELS = ("nodes", "units", "steps")
FORMATS = ("dot", "svg", "png", "pdf")

_CELL_KINDS = (Unit, Cell)
#: Inputs every cell of a branch reads beside its hidden state (the embed's context, the probe's
#: residual): the coarse levels draw the hidden state's chain and leave these to level "nodes".
_CONTEXT_PORTS = ("ctx", "probe")
_TraceKey = tuple[int, str, int]


# -- inputs -----------------------------------------------------------------------------------------

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


# -- the drawing --------------------------------------------------------------------------------------

def _display_key(node: Node, level: str) -> tuple:
    """Which drawn node `node` becomes at `level` (several graph nodes may share one)."""
    if isinstance(node, Prefetch) and level != "nodes":  # summarised on the cell whose read it stages
        return _display_key_of_cell(node.step, node.branch, node.unit, level)
    step, branch = getattr(node, "step", None), getattr(node, "branch", None)
    if isinstance(node, _CELL_KINDS) and level != "nodes":
        return _display_key_of_cell(step, branch, node.unit, level)
    if level == "steps" and branch is not None:
        return ("branch", step, branch)
    if level == "steps" and isinstance(node, (Guide, Update)):
        return ("update", step)
    return ("node", node)


def _display_key_of_cell(step: int, branch: str, unit: int, level: str) -> tuple:
    return ("cell", step, branch, unit) if level == "units" else ("branch", step, branch)


def _cluster_of(key: tuple) -> tuple:
    """(step, branch) of the cluster a drawn node sits in; a prefetch sits where it is issued."""
    if key[0] == "node":
        node = key[1]
        if isinstance(node, Prefetch):
            return node.issue[0], node.issue[1]
        return getattr(node, "step", None), getattr(node, "branch", None)
    if key[0] == "update":
        return key[1], None
    return key[1], key[2]


def _ident(key: tuple) -> str:
    if key[0] == "node":
        return key[1].name
    return ".".join(str(part) for part in key)


def _attributes(key: tuple, members: list[Node], look: _Look, spec: Any, level: str) -> dict[str, str]:
    kind = key[0]
    if kind == "node":
        node = key[1]
        params = node.params()
        if level == "nodes" or getattr(node, "step", None) is None:
            label = f"{node.name}\\n{node.op}" + (f" {params}" if params and len(params) < 40 else "")
        else:  # its cluster already says the step and branch
            label = node.op + (f" {params}" if params and len(params) < 40 else "")
        attrs = dict(NODE_STYLE.get(type(node), {}))
        if isinstance(node, _CELL_KINDS):
            cell = (node.step, node.branch, node.unit)
            state = look.states.get(cell, "C")
            if state != "?" and (look.traced or state != "C"):
                label += f"\\n{look.caption(cell)}"
            attrs.update(_cell_look(state, cell in look.runtime, look))
        return dict(label=label, **attrs)
    if kind == "cell":
        cell = key[1:]
        blocks = next((m.blocks for m in members if isinstance(m, _CELL_KINDS)), None)
        span = f" · blocks {blocks[0]}:{blocks[1]}" if blocks else ""
        label = f"u{cell[2]}{span} · {look.caption(cell)}"
        if cell in look.prefetch:
            issue = look.prefetch[cell]
            label += f"\\nprefetched at s{issue[0]}.{issue[1]}.u{issue[2]}"
        return dict(label=label, **_cell_look(look.state(*cell), cell in look.runtime, look))
    if kind == "branch":
        return _strip(key[1], key[2], members, look)
    step = key[1]
    timestep = _step_note(spec, step, "\\n")
    return dict(label=f"step {step}{timestep}", shape="ellipse", margin="0.04,0.02")


def _strip(step: int, branch: str, members: list[Node], look: _Look) -> dict[str, str]:
    """A (step, branch) at the steps level: its name and a summary over one coloured square per unit."""
    units = sorted({m.unit for m in members if isinstance(m, _CELL_KINDS)})
    cells = [(step, branch, u) for u in units]
    width = max(6, min(120, 240 // max(len(units), 1)))  # a strip about as wide whatever the unit count
    squares = []
    for cell in cells:
        state = look.state(*cell)
        fill = CELL_STYLE[state][0]  # no dashes: forty dashed squares in a row read as noise
        border = f' COLOR="{RUNTIME_BORDER}"' if look.traced and cell in look.runtime else ""
        squares.append(f'<TD BGCOLOR="{fill}"{border} WIDTH="{width}" HEIGHT="14" '
                       f'TITLE="u{cell[2]} {html.escape(look.caption(cell))}"></TD>')
    counts: dict[str, int] = {}
    for cell in cells:
        caption = look.caption(cell)
        counts[caption] = counts.get(caption, 0) + 1
    summary = ", ".join(f"{n} {caption}" for caption, n in counts.items())
    staged = sum(cell in look.prefetch for cell in cells)
    if staged:
        summary += f", {staged} prefetched"
    head = (f'<TR><TD COLSPAN="{max(len(cells), 1)}" BORDER="0" ALIGN="LEFT"><B>{branch}</B> '
            f'{html.escape(summary)}</TD></TR>')
    row = f"<TR>{''.join(squares)}</TR>" if squares else ""
    states = "".join(look.state(*cell) for cell in cells)
    return dict(label=f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="1">{head}{row}</TABLE>>',
                shape="plaintext", tooltip=f"s{step} {branch}: {states}")


def to_dot(graph: Graph, *, level: str = "units", steps: Iterable[int] | None = None,
           trace: Any = None) -> graphviz.Digraph:
    """The plan as a graphviz `Digraph` (`.source` is the DOT text); see the module docstring."""
    chosen = _check(graph, level, steps)
    look = _Look(graph, _trace(graph, trace))
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
        members = {k: v for k, v in members.items() if _cluster_of(k)[0] is not None or k in linked}
    spec = graph.spec

    dot = graphviz.Digraph(name="plan", graph_attr=dict(rankdir="TB", fontname="Helvetica", compound="true",
                                                        nodesep="0.2", ranksep="0.2" if level == "steps" else "0.35"),
                           node_attr=dict(fontname="Helvetica", fontsize="10"),
                           edge_attr=dict(fontsize="8", arrowsize="0.7"))
    title = f"level {level}" + (", with the run's trace" if look.traced else "")
    if spec is not None:
        title = (f"{spec.num_steps} steps, {spec.num_blocks} blocks, granularity {spec.granularity}, "
                 f"generation {spec.generation} ({title})")
    dot.attr(label=title, labelloc="t", fontsize="14")
    dot.node("legend", label=_legend(level, look, graph), shape="plaintext", fontsize="9")

    clusters: dict[tuple, list[tuple]] = {}
    for key in members:
        clusters.setdefault(_cluster_of(key), []).append(key)
    branches = _branch_order(graph, clusters)
    for key in clusters.get((None, None), []):
        dot.node(_ident(key), **_attributes(key, members[key], look, spec, level))
    for step in sorted({s for s, _ in clusters if s is not None}):
        if level == "steps":
            _steps_row(dot, step, branches, clusters, members, look, spec)
        elif level == "nodes":
            _branch_clusters(dot, step, branches, clusters, members, look, spec, level)
        else:
            _step_cluster(dot, step, branches, clusters, members, look, spec, level)
    for a, b, kind in edges:
        _edge(dot, level, a, b, kind, branches)
    if level != "steps":  # invisible, each prefetch just above the cell that issues it
        for key in members:
            if key[0] == "node" and isinstance(key[1], Prefetch):
                issuer = next((k for k in members if k[0] == "node" and isinstance(k[1], _CELL_KINDS)
                               and k[1].cell == tuple(key[1].issue)), None)
                if issuer is not None:
                    dot.edge(_ident(key), _ident(issuer), style="invis", weight="4")
    return dot


def _branch_order(graph: Graph, clusters: dict[tuple, list[tuple]]) -> list[str]:
    present = {b for _, b in clusters if b is not None}
    known = list(graph.spec.branches) if graph.spec is not None else ["cond", "uncond"]
    return [b for b in known if b in present] + sorted(present - set(known))


def _step_note(spec: Any, step: int, sep: str) -> str:
    """What a step's label adds to its number: its timestep, and in a run of several experts
    (Wan2.2) the one that runs it."""
    if spec is None or step >= len(spec.timesteps):
        return ""
    note = f"{sep}t={spec.timesteps[step]:g}"
    return note + (f" · {spec.step_models[step]}" if spec.step_models else "")


def _step_cluster(dot: graphviz.Digraph, step: int, branches: list[str], clusters: dict, members: dict,
                  look: _Look, spec: Any, level: str) -> None:
    timestep = _step_note(spec, step, " · ")
    with dot.subgraph(name=f"cluster_s{step}") as step_graph:
        step_graph.attr(label=f"step {step}{timestep}", style="rounded", color="#adb5bd", fontsize="12")
        for branch in branches:
            keys = clusters.get((step, branch))
            if not keys:
                continue
            with step_graph.subgraph(name=f"cluster_s{step}_{branch}") as branch_graph:
                branch_graph.attr(label=branch, style="dashed", color="#ced4da", fontsize="10")
                for key in keys:
                    branch_graph.node(_ident(key), **_attributes(key, members[key], look, spec, level))
        for key in clusters.get((step, None), []):
            step_graph.node(_ident(key), **_attributes(key, members[key], look, spec, level))


def _branch_clusters(dot: graphviz.Digraph, step: int, branches: list[str], clusters: dict, members: dict,
                     look: _Look, spec: Any, level: str) -> None:
    """Level nodes: a cluster per (step, branch) and no step cluster around them, so the long edges
    (latents from update to update, text into every step, reuse) pass between and beside the
    branches instead of around a box the width of the drawing."""
    timestep = _step_note(spec, step, " · ")
    for branch in branches:
        keys = clusters.get((step, branch))
        if keys:
            with dot.subgraph(name=f"cluster_s{step}_{branch}") as branch_graph:
                branch_graph.attr(label=f"step {step}{timestep} · {branch}", style="rounded,dashed", color="#adb5bd",
                                  fontsize="11")
                for key in keys:
                    branch_graph.node(_ident(key), **_attributes(key, members[key], look, spec, level))
    for key in clusters.get((step, None), []):
        dot.node(_ident(key), **_attributes(key, members[key], look, spec, level))


def _steps_row(dot: graphviz.Digraph, step: int, branches: list[str], clusters: dict, members: dict,
               look: _Look, spec: Any, level: str = "steps") -> None:
    """cond, the step's guide+update, uncond side by side on one rank: flat edges fix that order."""
    with dot.subgraph() as row:
        row.attr(rank="same")
        for branch in branches:
            for key in clusters.get((step, branch), []):
                row.node(_ident(key), **_attributes(key, members[key], look, spec, level))
        for key in clusters.get((step, None), []):
            row.node(_ident(key), **_attributes(key, members[key], look, spec, level))


def _branch_of(key: tuple) -> str | None:
    if key[0] == "node":
        return getattr(key[1], "branch", None)
    return key[2] if key[0] in ("cell", "branch") else None


def _is_spine(key: tuple) -> bool:
    return key[0] == "update" or (key[0] == "node" and isinstance(key[1], (Exchange, Guide, Update)))


def _edge(dot: graphviz.Digraph, level: str, src: tuple, dst: tuple, kind: str, branches: list[str]) -> None:
    """One edge; its ports put the first branch left of the second.

    Both branches of a step are the same shape, so without a hint dot's crossing minimisation
    breaks the tie either way from step to step. An edge leaving the update's south-west corner for
    cond and its south-east one for uncond (the same into the guide) crosses itself unless cond is
    on the left.
    """
    attrs = dict(EDGE_STYLE.get(kind, {}))
    a, b = _ident(src), _ident(dst)
    side = {branches[0]: "w", branches[-1]: "e"} if len(branches) == 2 else {}
    if kind != DATA:
        corner = side.get(_branch_of(dst))
        if corner:  # reuse/prefetch edges run down the outer side of their own branch
            attrs.update(tailport=corner, headport=corner)
    elif level == "steps" and _is_spine(dst) and _branch_of(src) is not None:
        if side.get(_branch_of(src)) == "e":  # a flat edge keeps its tail on the left: draw it reversed
            dot.edge(b, a, dir="back", **attrs)
            return
    elif _is_spine(src) and side.get(_branch_of(dst)):
        attrs["tailport"] = "s" + side[_branch_of(dst)]
    elif _is_spine(dst) and side.get(_branch_of(src)):
        attrs["headport"] = "n" + side[_branch_of(src)]
    dot.edge(a, b, **attrs)


def _edges(graph: Graph, level: str, drawn: dict[Node, tuple], rank: dict[Node, int]) -> list[tuple[tuple, tuple, str]]:
    """(source key, destination key, kind) between drawn nodes, deduplicated, in execution order."""
    # At the coarse levels the text embeddings feed every step: draw those edges into the first step only.
    first = min((n.step for n in drawn if getattr(n, "step", None) is not None), default=None)
    edges = [(src, dst, data) for src, dst, data in graph.nx.edges(data=True) if src in drawn and dst in drawn]
    if level == "nodes":  # reuse: from the residual's writer (coarse levels say "from sN" instead)
        for cell in [n for n in drawn if isinstance(n, Cell) and n.mode != "compute"]:
            source = (graph.cell_at(cell.source, cell.branch, cell.unit, cell.model) if cell.mode == REUSE_MODE
                      and cell.source is not None else graph.latest_writer(cell))
            if source is not None and source in drawn:
                edges.append((source, cell, {"kind": REUSE, "port": None}))
    out: list[tuple[tuple, tuple, str]] = []
    seen: set[tuple[tuple, tuple, str]] = set()
    for src, dst, data in sorted(edges, key=lambda e: (rank[e[1]], rank[e[0]], e[2]["kind"], e[2].get("port") or "")):
        if level != "nodes":
            if data.get("port") in _CONTEXT_PORTS:
                continue
            if isinstance(src, Input) and (getattr(dst, "step", first) != first or isinstance(dst, Update)):
                continue
            if isinstance(src, Update) and isinstance(dst, Update):  # the latents, parallel to the step's path
                continue
        edge = (drawn[src], drawn[dst], data["kind"])
        if edge[0] != edge[1] and edge not in seen:
            seen.add(edge)
            out.append(edge)
    return out


def render(graph: Graph, path: str | Path, *, level: str = "units", steps: Iterable[int] | None = None,
           trace: Any = None) -> Path:
    """Write the plan to `path` (.dot, .svg, .png or .pdf) and return the file written.

    The DOT source is always written next to it (`path` with the suffix `.dot`). Without the
    graphviz `dot` binary only the source is written, with a warning saying so, and that path is
    returned. `trace`: a run's `CacheStats` (or its `cell_states()` / `trace`) to draw what each
    cell did.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"path: expected a file ending in {', '.join('.' + f for f in FORMATS)}, got {str(path)!r}")
    source = to_dot(graph, level=level, steps=steps, trace=trace).source
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
