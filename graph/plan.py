"""`Plan`: a compiled graph plus how it was made and what it was compiled for.

`pipe.compile(...)` returns one. The fingerprint (model, dtype, latent shape, steps and timesteps,
guidance) binds it to a call: replaying it under a call that differs in any field is refused,
naming the field.
"""

from __future__ import annotations

from typing import Any

from edit.graph.core import Graph


class Plan(Graph):
    """A `Graph` with `pipeline` (the text of the passes that made it) and `fingerprint`."""

    pipeline: str = ""
    fingerprint: dict[str, Any]

    @classmethod
    def from_graph(cls, graph: Graph, *, pipeline: str = "", fingerprint: dict[str, Any] | None = None,
                   copy: bool = True) -> Plan:
        """A plan of `graph` (a copy of it; with `copy=False` it takes over `graph` itself)."""
        plan = cls.__new__(cls)
        plan.__dict__.update((graph.copy() if copy else graph).__dict__)
        plan.pipeline = pipeline
        plan.fingerprint = dict(fingerprint or {})
        return plan

    def mismatch(self, fingerprint: dict[str, Any]) -> str | None:
        """The first field where `fingerprint` (a call's) differs from this plan's, described; None if none."""
        for field, mine in self.fingerprint.items():
            theirs = fingerprint.get(field, mine)
            if theirs != mine:
                return f"{field}: the plan was compiled for {mine!r}, this call has {theirs!r}"
        return None
