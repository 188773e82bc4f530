"""Plans as files: versioned, human-readable JSON of the records, the edges, the pipeline text of the
passes that made the plan, and the fingerprint it was compiled for.

One JSON object per node (its kind, its printed name, its fields) in execution order, and one
`[producer, consumer, kind, port, select]` row per edge, by printed name — so a cell can be flipped
to reuse by editing one word. Loading rebuilds the records through `Graph`'s API and verifies the
result, so a hand-broken file is an error naming the node, never a crash in the runtime.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from edit.graph import nodes as records
from edit.graph.core import Graph
from edit.graph.gcpause import paused_gc
from edit.graph.planio import PlanFileError, read_text, sweep_temps, write_text
from edit.graph.planschema import check_field, parse_int
from edit.graph.spec import RunSpec

FORMAT = "edit-plan"
VERSION = 1

#: Node kinds a plan file may hold, by the name written in the file.
KINDS: dict[str, type] = {cls.__name__: cls for cls in (records.Input, records.Embed, records.Unit, records.Probe,
                                                         records.Cell, records.Prefetch, records.Head, records.Exchange, records.Guide,
                                                         records.Update, records.Output)}




def register_node_kind(cls: type) -> type:
    """Let plan files hold a custom node kind (its fields must be JSON values)."""
    if not (isinstance(cls, type) and issubclass(cls, records.Node)):
        raise TypeError(f"cls: expected a subclass of edit.graph.Node, got {cls!r}")
    KINDS[cls.__name__] = cls
    return cls


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def to_dict(plan: Graph) -> dict[str, Any]:
    """The plan as a JSON-ready dict (see the module docstring)."""
    nodes = []
    for node in plan.order():
        kind = type(node).__name__
        if KINDS.get(kind) is not type(node):
            raise TypeError(f"plan: %{node.name} is a {kind}, not a kind plan files know "
                            "(edit.graph.planfile.register_node_kind)")
        nodes.append({"kind": kind, "name": node.name,
                      **{f.name: _jsonable(getattr(node, f.name)) for f in attrs.fields(type(node))}})
    edges = sorted([[u.name, v.name, d["kind"], d.get("port"), d.get("select")] for u, v, d in plan.edges()],
                   key=lambda e: (e[1], e[3] or "", e[0]))
    spec = None if plan.spec is None else _jsonable(attrs.asdict(plan.spec))
    return {"format": FORMAT, "version": VERSION, "spec": spec, "pipeline": getattr(plan, "pipeline", ""),
            "fingerprint": _jsonable(getattr(plan, "fingerprint", {})), "nodes": nodes, "edges": edges}


def save(plan: Graph, path: str | os.PathLike) -> Path:
    """Write `plan` to `path` atomically (a temp file in the same folder, then a rename)."""
    path = Path(path)
    return write_text(path, json.dumps(to_dict(plan), indent=1) + "\n")


def load(path: str | os.PathLike, *, bind: bool = True) -> Any:
    """Read a plan file written by `save` (or edited by hand) into a verified `Plan`; with `bind`, a
    fingerprint lacking a field is refused naming it (`bind=False`: loaded unbound, never run)."""
    from edit.graph.plan import Plan
    from edit.graph.verify import verify

    path = Path(path)
    text = read_text(path)
    sweep_temps(path)
    try:
        data = json.loads(text, parse_int=parse_int)
    except json.JSONDecodeError as err:
        raise PlanFileError(f"{path}: not a JSON plan file ({err})") from None
    except RecursionError:
        raise PlanFileError(f"{path}: not a plan file (JSON nested too deeply to be one)") from None
    with paused_gc():  # many small records, no cycles: a collection would walk the model's heap
        plan = from_dict(data, where=str(path))
        try:
            verify(plan)
        except ValueError as err:
            raise PlanFileError(f"{path}: {err}") from None
    plan = plan if isinstance(plan, Plan) else Plan.from_graph(plan, copy=False)
    missing = plan.missing_fields()
    if bind and missing:
        raise PlanFileError(f"{path}: fingerprint: no {missing[0]!r} field (a plan binds to the call it was "
                            "compiled for; load it with bind=False to inspect or render it)")
    plan.bound = bind and not missing
    return plan


def from_dict(data: Any, *, where: str = "plan") -> Any:
    """A `Plan` from `to_dict`'s form (not yet verified)."""
    from edit.graph.plan import Plan

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise PlanFileError(f"{where}: not an EDiT plan file (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise PlanFileError(f"{where}: version {data.get('version')!r} is not supported (this EDiT reads version "
                            f"{VERSION})")
    for key, kind in (("nodes", list), ("edges", list), ("fingerprint", dict), ("pipeline", str)):
        if not isinstance(data.get(key), kind):
            raise PlanFileError(f"{where}: {key!r} must be a JSON {kind.__name__}")
    spec = None
    if data.get("spec") is not None:
        try:
            if not isinstance(data["spec"], dict):
                raise TypeError("expected an object of RunSpec fields")
            types = {f.name: f.type for f in attrs.fields(RunSpec)}
            for key, value in data["spec"].items():
                check_field(value, types.get(key), key)
            spec = RunSpec(**data["spec"])
        except (TypeError, ValueError) as err:
            raise PlanFileError(f"{where}: spec: {err}") from None
    graph = Graph(spec)
    for i, entry in enumerate(data["nodes"]):
        graph.add_node(_record(entry, f"{where}: nodes[{i}]"))
    for i, edge in enumerate(data["edges"]):
        if not (isinstance(edge, list) and len(edge) == 5):
            raise PlanFileError(f"{where}: edges[{i}]: expected [producer, consumer, kind, port, select]")
        src, dst, kind, port, select = edge
        ends = []
        for name in (src, dst):
            node = graph.get(name) if isinstance(name, str) else None
            if node is None:
                raise PlanFileError(f"{where}: edges[{i}]: no node %{name} in the file")
            ends.append(node)
        try:
            graph.add_edge(ends[0], ends[1], kind=kind, port=port, select=select)
        except ValueError as err:
            raise PlanFileError(f"{where}: edges[{i}]: {err}") from None
    fingerprint = {k: tuple(v) if isinstance(v, list) else v for k, v in data["fingerprint"].items()}
    return Plan.from_graph(graph, pipeline=data["pipeline"], fingerprint=fingerprint, copy=False)


def _record(entry: Any, where: str) -> records.Node:
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise PlanFileError(f"{where}: expected an object with a \"kind\"")
    fields = dict(entry)
    kind, name = fields.pop("kind"), fields.pop("name", None)
    cls = KINDS.get(kind)
    if cls is None:
        raise PlanFileError(f"{where} ({name}): unknown node kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    known = {f.name for f in attrs.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise PlanFileError(f"{where} (%{name}): {kind} has no field(s) {unknown} (fields: {sorted(known)})")
    types = {f.name: f.type for f in attrs.fields(cls)}
    try:
        for key, value in fields.items():
            check_field(value, types[key], key)
        node = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (TypeError, ValueError) as err:
        raise PlanFileError(f"{where} (%{name}): {err}") from None
    if name is not None and name != node.name:
        raise PlanFileError(f"{where}: name %{name} does not match the record's fields (they name %{node.name})")
    return node
