"""Declared effects: the residual keys each cell reads and writes, derived from its fields here only.

The verifier, the executor, dce, the prefetch scheduler and the renderer all ask `cell_effects`;
nothing else decides which residual a cell touches.

A key says whose residual it is and what makes it reusable. A unit's *latest* residual is
`(model, generation, branch, unit)`: read only within its run, after an earlier step of the same run
wrote it. A residual *kept for a step* (a pinned source, or one later generations read) is
`(model, generation, branch, unit, step, timestep, latent shape)`: a read from another generation
asks for its own step's timestep and shape, so a segment of another size or schedule finds nothing
(a miss: the cell recomputes) rather than adding a residual computed for other noise levels or
tokens. The owner (which cache controller) is added by the store namespace at run time, not here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from edit.graph.nodes import COMPUTE, REUSE_MODE, Cell

if TYPE_CHECKING:
    from edit.graph.core import Graph


@attrs.frozen
class Effects:
    """Keys a cell's paths touch: `reads` (the reuse path's loads), `compute_writes` (the compute
    path's saves), `reuse_writes` (saves after a hit), `miss_writes` (saves after a miss recomputes)."""

    reads: tuple[tuple, ...] = ()
    compute_writes: tuple[tuple, ...] = ()
    reuse_writes: tuple[tuple, ...] = ()
    miss_writes: tuple[tuple, ...] = ()

    @property
    def writes(self) -> tuple[tuple, ...]:
        """Every key some path may write, each once."""
        return tuple(dict.fromkeys(self.compute_writes + self.reuse_writes + self.miss_writes))


def shape_tag(shape: Any) -> str | None:
    """A latent shape as it appears in keys: "1x16x3x4x6" (None when the spec has none)."""
    return None if shape is None else "x".join(str(int(d)) for d in shape)


def latest_key(cell: Cell) -> tuple:
    """The key of the unit's latest residual in its run."""
    return (cell.model, cell.generation, cell.branch, cell.unit)


def step_key(graph: Graph | None, cell: Cell, generation: int, step: int) -> tuple:
    """The key of the residual `generation` kept for `step` of this cell's unit (its timestep and the
    latent shape from the graph's spec)."""
    spec = graph.spec if graph is not None else None
    timestep = spec.timesteps[step] if spec is not None and 0 <= step < len(spec.timesteps) else None
    shape = shape_tag(getattr(spec, "latent_shape", None))
    return (cell.model, generation, cell.branch, cell.unit, step, timestep, shape)


def writes_latest(cell: Cell) -> bool:
    """Whether the cell writes its unit's latest residual on the path it certainly or possibly takes
    (a compute path, or a window reuse, which stores what it applied)."""
    return cell.mode != REUSE_MODE or bool(cell.window)


def _read_key(graph: Graph | None, cell: Cell) -> tuple:
    if cell.source is not None and graph is not None:
        src = graph.cell_at(cell.source, cell.branch, cell.unit, cell.model)
        if src is not None and src.pin and src.mode == COMPUTE:
            return step_key(graph, cell, cell.generation, cell.source)
    return latest_key(cell)


def cell_effects(graph: Graph | None, cell: Cell) -> Effects:
    """The keys `cell` reads and writes on each of its paths (see the module docstring)."""
    latest = latest_key(cell)
    pin = (step_key(graph, cell, cell.generation, cell.step),) if cell.pin else ()
    if cell.mode == COMPUTE:
        return Effects(compute_writes=(latest,) + pin)
    if cell.window:
        reads = tuple(step_key(graph, cell, g, cell.step) for g in cell.window)
        return Effects(reads=reads, reuse_writes=(latest,) + pin, miss_writes=(latest,) + pin)
    read = _read_key(graph, cell)
    compute = (latest,) + pin if cell.mode != REUSE_MODE else ()
    return Effects(reads=(read,), compute_writes=compute, reuse_writes=pin,
                   miss_writes=tuple(dict.fromkeys((read,) + pin)))
