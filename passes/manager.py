"""`PassManager`: run passes in order, verify between them in debug mode, record what changed."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import attrs

from edit.graph import Graph, same_structure, verify

Pass = Callable[[Graph], Graph]


@attrs.frozen
class PassRecord:
    """What one pass did: whether it changed the graph and how many nodes it added/removed."""

    name: str
    changed: bool
    added: int
    removed: int
    seconds: float

    def __str__(self) -> str:
        what = f"+{self.added} -{self.removed} nodes" if self.changed else "unchanged"
        return f"{self.name}: {what} ({self.seconds * 1000:.1f} ms)"


def pass_name(fn: Pass) -> str:
    if isinstance(fn, functools.partial):
        args = ", ".join(f"{k}={v!r}" for k, v in fn.keywords.items() if not callable(v))
        return f"{pass_name(fn.func)}({args})"
    return getattr(fn, "__name__", type(fn).__name__)


class PassManager:
    """Apply `passes` (each `Graph -> Graph`) in order. With `debug`, `verify` runs after each pass,
    so a pass that breaks the graph fails right there, named."""

    def __init__(self, passes: Sequence[Pass], *, debug: bool = False):
        for fn in passes:
            if not callable(fn):
                raise TypeError(f"passes: expected callables Graph -> Graph, got {type(fn).__name__}")
        self.passes = list(passes)
        self.debug = debug
        self.records: list[PassRecord] = []

    def run(self, graph: Graph) -> Graph:
        self.records = []
        for fn in self.passes:
            start = time.perf_counter()
            new = fn(graph)
            if not isinstance(new, Graph):
                raise TypeError(f"{pass_name(fn)}: a pass must return a Graph, got {type(new).__name__}")
            if self.debug:
                try:
                    verify(new)
                except ValueError as err:
                    raise type(err)(f"after pass {pass_name(fn)}: {err}") from err
            changed = new is not graph and not same_structure(new, graph)
            before, after = set(graph.nx.nodes), set(new.nx.nodes)
            self.records.append(PassRecord(pass_name(fn), changed, len(after - before), len(before - after),
                                           time.perf_counter() - start))
            graph = new
        return graph

    def report(self) -> str:
        return "\n".join(str(r) for r in self.records)
