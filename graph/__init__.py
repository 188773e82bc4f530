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
from edit.graph.nodes import (BRANCHES, COMPUTE, DATA, EDGE_KINDS, GUARDS, PREFETCH, REUSE, SKIP, Decide, Embed,
                              Guide, Head, Input, Load, Merge, Node, Output, Prefetch, Probe, Reuse, Save, Unit, Update)
from edit.graph.draw import LEVELS, render, to_dot
from edit.graph.spec import GRANULARITIES, RunSpec, check_granularity, unit_ranges
from edit.graph.verify import GraphError, verify

__all__ = [
    "BRANCHES", "COMPUTE", "DATA", "EDGE_KINDS", "GRANULARITIES", "GUARDS", "LEVELS", "PREFETCH", "REUSE", "SKIP",
    "Decide", "Embed", "Graph", "GraphError", "Guide", "Head", "Input", "Load", "Merge", "Node", "Output", "Prefetch", "Probe",
    "Reuse", "RunSpec", "Save", "Unit", "Update",
    "check_granularity", "lower", "render", "same_structure", "to_dot", "unit_ranges", "verify",
]
