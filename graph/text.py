"""Text views of a graph: the line-per-node IR print (the golden-test oracle) and the step grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edit.graph.nodes import COMPUTE, DATA, DECIDE, Cell, Node, Unit

if TYPE_CHECKING:
    from edit.graph.core import Graph


def _ref(node: Node, select: str | None = None) -> str:
    return f"%{node.name}" + (f".{select}" if select else "")


def header(graph: Graph) -> str:
    spec = graph.spec
    if spec is None:
        return "# edit graph (no spec)"
    model = "" if spec.model == "transformer" else f", model {spec.model}"
    return (f"# edit graph: {spec.num_steps} steps, branches {','.join(spec.branches)}, "
            f"{spec.num_blocks} blocks, granularity {spec.granularity}, generation {spec.generation}{model}\n"
            f"# timesteps: {', '.join(repr(t) for t in spec.timesteps)}")


def node_line(graph: Graph, node: Node) -> str:
    """`%name = op(port=%producer, ...) params  [kind<-%producer ...]`."""
    args = ", ".join(f"{d['port']}={_ref(u, d.get('select'))}" for u, d in graph.in_edges(node, DATA))
    line = f"%{node.name} = {node.op}({args})" if args else f"%{node.name} = {node.op}"
    params = node.params()
    if params:
        line += f" {params}"
    control = [f"{d['kind']}<-{_ref(u)}" for u, d in graph.in_edges(node, kind=None) if d["kind"] != DATA]
    if control:
        line += "  [" + " ".join(sorted(control)) + "]"
    region = node.region(graph)
    if region:
        line += " {\n" + "".join(f"    {r}\n" for r in region) + "  }"
    return line


def to_text(graph: Graph) -> str:
    """Stable, line-per-node print in execution order (like a jaxpr or an FX graph print)."""
    return "\n".join([header(graph)] + [node_line(graph, n) for n in graph.order()]) + "\n"


def cell_states(graph: Graph) -> dict[tuple[int, str, int], str]:
    """State of every (step, branch, unit): C computed (a plain unit, or a cell that always computes),
    S reused, R reused from another generation, ? decided at run time."""
    cells: dict[tuple[int, str, int], str] = {}
    for node in graph.nodes((Unit, Cell)):
        cells[(node.step, node.branch, node.unit)] = cell_state(node)
    return cells


def schedule_rows(states: dict[tuple[int, str, int], str]) -> dict[tuple[str, int], str]:
    """A {(step, branch, unit): state} grid as {(branch, unit): one character per step}."""
    rows: dict[tuple[str, int], list[str]] = {}
    for (step, branch, unit), state in sorted(states.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        rows.setdefault((branch, unit), []).append(state)
    return {k: "".join(v) for k, v in sorted(rows.items())}


def cell_state(node: Node) -> str:
    if not isinstance(node, Cell) or node.mode == COMPUTE:
        return "C"
    if node.window:
        return "R"
    return "?" if node.mode == DECIDE else "S"


def summary(graph: Graph, trace: dict[tuple[int, str, int], str] | None = None) -> str:
    """A step x branch grid with one character per unit (see `cell_states`); with `trace` (a run's
    `stats.cell_states()`), what each cell did in that run instead (C, S, or M: missed, recomputed)."""
    cells = cell_states(graph)
    if trace:
        cells.update((k, v) for k, v in trace.items() if k in cells and (cells[k] == "?" or v == "M"))
    steps = sorted({k[0] for k in cells})
    branches = [b for b in (graph.spec.branches if graph.spec else ("cond", "uncond"))
                if any(k[1] == b for k in cells)]
    units = sorted({k[2] for k in cells})
    width = max(len(units), max((len(b) for b in branches), default=4))
    # a run of several experts (Wan2.2) says which one runs each step, in a last column
    models = graph.spec.step_models if graph.spec is not None else ()
    lines = ["step  " + "  ".join(b.ljust(width) for b in branches) + ("  model" if models else "")]
    for step in steps:
        row = ["".join(cells.get((step, b, u), ".") for u in units).ljust(width) for b in branches]
        if models:
            row.append(models[step])
        lines.append((f"{step:>4}  " + "  ".join(row)).rstrip())
    return "\n".join(lines)
