"""`warm_start`: the first steps of a segment reuse what earlier segments kept for those steps.

Long videos are generated segment by segment (generations). With a reuse window of earlier
generations, each cell of the first `warm_steps` steps adds the mean of the residuals the window's
generations kept for that same (step, branch, unit) instead of computing it; every generation keeps
the residuals of its warm steps under step keys for the segments after it. Written with the public
editing API (`set_window`).
"""

from __future__ import annotations

import attrs

from edit.graph import Graph
from edit.passes.base import Pass, register_pass
from edit.passes.edit import set_window


def check_warm_steps(warm_steps: object, num_steps: int | None = None) -> int:
    if isinstance(warm_steps, bool) or not isinstance(warm_steps, int) or warm_steps < 0:
        raise ValueError(f"warm_steps: expected an int >= 0, got {warm_steps!r}")
    if num_steps is not None and warm_steps >= num_steps:
        raise ValueError(f"warm_steps: {warm_steps} must be fewer than the {num_steps} denoising steps")
    return warm_steps


def warm_start(graph: Graph, window: tuple[int, ...], warm_steps: int) -> Graph:
    """Cells of steps < `warm_steps` reuse the `window`'s residuals (see the module docstring);
    returns the same graph when `warm_steps` is 0."""
    check_warm_steps(warm_steps, graph.spec.num_steps if graph.spec is not None else None)
    if not warm_steps:
        return graph
    return set_window(graph, window, steps=range(warm_steps))


@register_pass
@attrs.frozen
class WarmStart(Pass):
    """`warm_start(window=[...], warm_steps=k)` as a pipeline pass."""

    name = "warm_start"
    window: tuple = attrs.field(default=(), converter=tuple, metadata={"text": lambda v: repr(list(v)), "always": True})
    warm_steps: int = attrs.field(default=0, metadata={"always": True})

    def __attrs_post_init__(self) -> None:
        check_warm_steps(self.warm_steps)

    def run(self, graph: Graph) -> Graph:
        return warm_start(graph, self.window, self.warm_steps)
