"""The EDiT IR: node records, `Graph`, `RunSpec`, lowering, text printer and verifier.

Imports no model code: a graph can be built, printed and verified without torch models.

>>> from edit.graph import RunSpec, lower, verify
>>> g = verify(lower(RunSpec(num_steps=2, timesteps=[999.0, 500.0], num_blocks=2)))
>>> print(g.summary())
step  cond    uncond
   0  C       C
   1  C       C
"""

from edit.graph.core import Graph, same_structure
from edit.graph.lower import lower
from edit.graph.nodes import (BRANCHES, CELL_MODES, COMPUTE, DATA, DECIDE, DEFAULT_MODEL, EDGE_KINDS, PREFETCH,
                              REUSE, REUSE_MODE, Cell, Embed, Exchange, Guide, Head, Input, Node, Output, Prefetch, Probe, Unit,
                              Update)
from edit.graph.effects import Effects, cell_effects, latest_key, step_key
from edit.graph.draw import LEVELS, render, to_dot
from edit.graph.plan import Plan
from edit.graph.spec import GRANULARITIES, RunSpec, check_granularity, unit_ranges
from edit.graph.verify import GraphError, verify

__all__ = [
    "BRANCHES", "CELL_MODES", "COMPUTE", "DATA", "DECIDE", "DEFAULT_MODEL", "EDGE_KINDS", "GRANULARITIES", "LEVELS",
    "PREFETCH", "REUSE", "REUSE_MODE", "Cell", "Embed", "Exchange", "Graph", "GraphError", "Guide", "Head", "Input", "Node",
    "Output", "Plan", "Prefetch", "Probe", "RunSpec", "Unit", "Update",
    "check_granularity", "lower", "render", "Effects", "cell_effects", "latest_key", "step_key", "same_structure", "to_dot", "unit_ranges", "verify",
]
