"""`Plan`: a compiled graph plus how it was made and what it was compiled for.

`pipe.compile(...)` returns one. The fingerprint (model class and config, a digest of its weights,
dtype, latent shape, steps and timesteps, guidance, residual shape) binds it to a call: replaying it
under a call that differs in any field is refused, naming the field. Plans save to and load from
versioned JSON (`edit.graph.planfile`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from edit.graph.core import Graph
from edit.graph.nodes import COMPUTE, DECIDE, REUSE_MODE, Cell

#: Bytes of one element, by the dtype names a fingerprint records.
DTYPE_BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.float64": 8}


#: The fields every runnable plan's fingerprint has: a file without one of them loads only unbound.
FINGERPRINT_FIELDS = ("model", "weights", "dtype", "scheduler", "latent_shape", "num_steps", "timesteps",
                      "guidance_scale", "branches", "num_blocks", "generation", "models", "window", "residual_shape")


class Plan(Graph):
    """A `Graph` with `pipeline` (the text of the passes that made it) and `fingerprint`. `bound`:
    False for a plan loaded for inspection only (`Plan.load(path, bind=False)`), which never runs."""

    pipeline: str = ""
    fingerprint: dict[str, Any]
    bound: bool = True

    @classmethod
    def from_graph(cls, graph: Graph, *, pipeline: str = "", fingerprint: dict[str, Any] | None = None,
                   copy: bool = True) -> Plan:
        """A plan of `graph` (a copy of it; with `copy=False` it takes over `graph` itself)."""
        plan = cls.__new__(cls)
        plan.__dict__.update((graph.copy() if copy else graph).__dict__)
        plan.pipeline = pipeline
        plan.fingerprint = dict(fingerprint or {})
        return plan

    # -- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as versioned, human-readable JSON (atomically); returns the path."""
        from edit.graph import planfile
        return planfile.save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, bind: bool = True) -> Plan:
        """Read and verify a plan file; a broken or foreign file raises `PlanFileError` saying what.
        A file whose fingerprint lacks a field is refused, naming it, unless `bind=False` (then it
        loads for inspection and rendering, and no call runs it)."""
        from edit.graph import planfile
        return planfile.load(path, bind=bind)

    # -- inspection -------------------------------------------------------------------------------
    def stats(self, store: Any = None) -> dict[str, Any]:
        """What the plan will do, before running it: node counts per kind; cells by mode; the
        predicted skip ratio of the static cells; the bytes of one residual (from the fingerprint),
        the residual bytes the compute paths write (run-time cells counted as computing), and the
        predicted peak of stored residual bytes — per tier of `store` when it has tier budgets
        (`TieredStore`: filled top down, as its spills do)."""
        cells = self.nodes(Cell)
        modes = Counter(c.mode for c in cells)
        static = modes[COMPUTE] + modes[REUSE_MODE]
        residual = self.residual_bytes()
        keys = {k for c in cells for k in self.effects(c).writes}
        writes = modes[COMPUTE] + modes[DECIDE] + sum(c.pin for c in cells)
        out: dict[str, Any] = {
            "nodes": dict(sorted(Counter(type(n).__name__ for n in self.nx.nodes).items())),
            "cells": {"total": len(cells), **{m: modes[m] for m in (COMPUTE, REUSE_MODE, DECIDE)}},
            "predicted_skip_ratio": modes[REUSE_MODE] / static if static else None,
            "runtime_cells": modes[DECIDE],
            "residual_bytes": residual,
            "residual_bytes_saved": None if residual is None else writes * residual,
            "peak_residual_bytes": None if residual is None else len(keys) * residual,
        }
        budgets = getattr(store, "budgets", None)
        if budgets is not None and residual is not None:
            left, tiers = len(keys) * residual, []
            for budget in budgets:
                held = left if budget is None else min(left, budget // residual * residual)
                tiers.append(held)
                left -= held
            out["peak_residual_bytes_per_tier"] = tiers
        return out

    def residual_bytes(self) -> int | None:
        """Bytes of one stored residual, from the fingerprint's residual shape and dtype (None if unknown)."""
        return residual_bytes(self.fingerprint)

    def mismatch(self, fingerprint: dict[str, Any]) -> str | None:
        """The first field where `fingerprint` (a call's) differs from this plan's, or that this plan
        lacks, described; None if none."""
        for field, theirs in fingerprint.items():
            if field not in self.fingerprint:
                return f"fingerprint: the plan has no {field!r} field, so it cannot be checked against this call"
            mine = self.fingerprint[field]
            if theirs != mine:
                return f"{field}: the plan was compiled for {mine!r}, this call has {theirs!r}"
        return None

    def missing_fields(self) -> list[str]:
        """The `FINGERPRINT_FIELDS` this plan's fingerprint lacks."""
        return [f for f in FINGERPRINT_FIELDS if f not in self.fingerprint]

    def render(self, path: str | os.PathLike, *, level: str = "units", steps: Any = None, trace: Any = None) -> Path:
        """Draw the plan (`edit.graph.draw.render`): .svg/.png/.pdf/.dot; `trace=pipe.cache.stats` draws what ran."""
        from edit.graph.draw import render
        return render(self, path, level=level, steps=steps, trace=trace)


def residual_bytes(fingerprint: dict[str, Any]) -> int | None:
    """Bytes of one residual of a call with this fingerprint (its residual shape and dtype), or None."""
    shape, dtype = fingerprint.get("residual_shape"), fingerprint.get("dtype")
    if shape is None or dtype not in DTYPE_BYTES:
        return None
    return math.prod(shape) * DTYPE_BYTES[dtype]
