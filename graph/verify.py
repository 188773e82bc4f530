"""`verify(graph)`: structural checks that make a broken graph fail near its cause, naming the node.

Like torch.fx's `lint` or an MLIR op verifier: a graph that passes runs without crashing deep in the
runtime and computes what it prints.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import networkx as nx

from edit.graph.core import Graph
from edit.graph.nodes import DATA, EDGE_KINDS, Cell, Embed, Guide, Head, Input, Node, Probe, Unit, Update


class GraphError(ValueError):
    """A malformed graph; the message names the offending node."""


def _name(node: object) -> str:
    return f"%{node.name}" if isinstance(node, Node) else repr(node)


def verify(graph: Graph) -> Graph:
    """Check the graph and return it unchanged; raise `GraphError` naming the first bad node.

    Checks: every endpoint is a record added with `Graph.add_node`; unique printed names; edge
    kinds and `select`s the producer yields; acyclic; each input port fed exactly once, no unknown
    port; run inputs the spec has; every step of the spec present (embed, head, guide, update) and
    none outside it; per (step, branch) the block ranges inside the model, in order, covering the
    stack without overlap; kind rules (`Node.check`: a reuse reads a residual that an earlier cell
    stores and that is not overwritten before the read; a prefetch precedes its read, after the
    write it stages).
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"graph: expected an edit.graph.Graph, got {type(graph).__name__}")
    enabled = gc.isenabled()
    gc.disable()  # no garbage cycles made here; a collection would walk the whole heap mid-check
    try:
        _verify(graph)
    finally:
        if enabled:
            gc.enable()
    return graph


def _verify(graph: Graph) -> None:
    g = graph.nx
    names: dict[str, Node] = {}
    for node in g.nodes:
        if not isinstance(node, Node) or graph._by_name.get(node.name) is not node:
            edge = next(iter(g.in_edges(node)), None) or next(iter(g.out_edges(node)), None)
            where = f"edge {_name(edge[0])} -> {_name(edge[1])}" if edge else "node"
            raise GraphError(f"dangling {where}: {_name(node)} is not a node of the graph "
                             "(add nodes with Graph.add_node, never through graph.nx)")
        if node.name in names:
            raise GraphError(f"%{node.name}: two nodes print with this name ({names[node.name]!r} and {node!r})")
        names[node.name] = node
    for u, v, data in g.edges(data=True):
        if data.get("kind") not in EDGE_KINDS:
            raise GraphError(f"edge {_name(u)} -> {_name(v)}: kind {data.get('kind')!r} is not one of {EDGE_KINDS}")
        if data["kind"] == DATA and not data.get("port"):
            raise GraphError(f"data edge {_name(u)} -> {_name(v)} has no port")
        select = data.get("select")
        if select is not None and select not in u.outputs:
            raise GraphError(f"{_name(v)}: input {data.get('port')!r} selects {select!r} of {_name(u)}, which yields "
                             + (f"only {u.outputs}" if u.outputs else "a single value (no select)"))
    try:
        order = graph.order()  # a topological order (kept for compile_program): none exists with a cycle
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(g)
        path = " -> ".join(_name(e[0]) for e in cycle) + f" -> {_name(cycle[0][0])}"
        raise GraphError(f"cycle through {_name(cycle[0][0])}: {path}") from None
    pred = g._pred
    for node in order:
        ports: dict[str, int] = {}
        for keydict in pred[node].values():
            for d in keydict.values():
                if d["kind"] == DATA:
                    ports[d["port"]] = ports.get(d["port"], 0) + 1
        for port in node.inputs:
            if port not in ports:
                raise GraphError(f"{_name(node)}: input {port!r} has no producer")
        for port, count in ports.items():
            if port not in node.inputs and port not in node.optional:
                raise GraphError(f"{_name(node)}: unknown input port {port!r} "
                                 f"(expects {node.inputs + node.optional})")
            if count > 1:
                raise GraphError(f"{_name(node)}: input {port!r} has {count} producers")
        problem = node.check(graph)
        if problem:
            raise GraphError(f"{_name(node)}: {problem}")
    if graph.spec is not None:
        _check_against_spec(graph)


def _check_against_spec(graph: Graph) -> None:
    spec = graph.spec
    inputs = set(spec.run_inputs)
    stacks: dict[tuple[int, str], list[Node]] = defaultdict(list)
    seen: set[tuple] = set()
    for node in graph.nx.nodes:
        if isinstance(node, Input) and node.value not in inputs:
            raise GraphError(f"{_name(node)}: unknown run input {node.value!r} (this spec has {sorted(inputs)})")
        step = getattr(node, "step", None)
        if step is None:
            continue
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < spec.num_steps:
            raise GraphError(f"{_name(node)}: step {step!r} is outside the spec's steps 0..{spec.num_steps - 1}")
        branch = getattr(node, "branch", None)
        if branch is not None and branch not in spec.branches:
            raise GraphError(f"{_name(node)}: branch {branch!r} is not one of the spec's {spec.branches}")
        if isinstance(node, (Unit, Cell, Probe)):
            stacks[(step, branch)].append(node)
        if isinstance(node, Embed):
            given = set(graph.inputs_of(node)) - set(Embed.inputs)
            if given != set(spec.conditions):
                raise GraphError(f"{_name(node)}: conditioned by {sorted(given)}, but the spec's run conditions "
                                 f"every embed by {sorted(spec.conditions)}")
        if isinstance(node, (Embed, Head)):
            seen.add((type(node), step, branch))
        elif isinstance(node, (Guide, Update)):
            seen.add((type(node), step))
        model = getattr(node, "model", None)
        if model is not None and model != spec.model_at(step):
            raise GraphError(f"{_name(node)}: model {model!r}, but the spec runs {spec.model_at(step)!r} at step {step}")
        if isinstance(node, Cell) and node.generation != spec.generation:
            raise GraphError(f"{_name(node)}: generation {node.generation} differs from the spec's {spec.generation}")
    for step in range(spec.num_steps):
        needed = [(Embed, step, b) for b in spec.branches] + [(Head, step, b) for b in spec.branches]
        needed += [(Guide, step)] if spec.cfg else []
        needed += [(Update, step)]
        for what in needed:
            if what not in seen:
                label = f"s{step}" + (f".{what[2]}" if len(what) > 2 else "")
                raise GraphError(f"%{label}.{what[0].__name__.lower()}: missing; the spec runs step {step} "
                                 f"of {spec.num_steps} (remove steps through the RunSpec, not by deleting nodes)")
        for branch in spec.branches:
            _check_stack(sorted(stacks[(step, branch)], key=lambda n: n.blocks[0]), spec.num_blocks, step, branch)


def _check_stack(nodes: list[Node], num_blocks: int, step: int, branch: str) -> None:
    """The block ranges of one forward: inside the model, non-empty, contiguous from 0 to the end."""
    expected = 0
    units = []
    for node in nodes:
        start, stop = node.blocks
        if not (0 <= start < stop <= num_blocks):
            raise GraphError(f"{_name(node)}: blocks {start}:{stop} are not a non-empty range inside the "
                             f"model's 0:{num_blocks}")
        if start < expected:
            raise GraphError(f"{_name(node)}: blocks {start}:{stop} overlap an earlier unit (up to block {expected})")
        if start > expected:
            raise GraphError(f"{_name(node)}: blocks {expected}:{start} of s{step}.{branch} are run by no unit")
        expected = stop
        if not isinstance(node, Probe):
            units.append(node.unit)
    if nodes and expected != num_blocks:
        raise GraphError(f"{_name(nodes[-1])}: blocks {expected}:{num_blocks} of s{step}.{branch} are run by no unit")
    if units != sorted(units):
        raise GraphError(f"%s{step}.{branch}.u{units[0]}: unit indices {units} are not in block order")
