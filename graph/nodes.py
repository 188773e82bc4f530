"""Node records of the EDiT IR.

Every node is a frozen attrs record identified by its fields (step, branch, unit, generation, ...),
never by a nested structure: neighbours are edges of the `Graph`. Records are hashable, so the
record itself is the networkx node.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

#: CFG branch names, as diffusers' cache contexts call them.
BRANCHES = ("cond", "uncond")

#: Edge kinds.
DATA, SKIP, REUSE, PREFETCH = "data", "skip", "reuse", "prefetch"
EDGE_KINDS = (DATA, SKIP, REUSE, PREFETCH)


def _branch_rank(branch: str | None) -> int:
    if branch is None:
        return -1
    return BRANCHES.index(branch) if branch in BRANCHES else len(BRANCHES)


@attrs.frozen(order=False)
class Node:
    """Base of every node record.

    `inputs` names the data ports a node must receive (the verifier checks them); `phase` orders
    node kinds inside one (step, branch) for the deterministic topological order.
    """

    inputs: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[int] = 0

    @property
    def name(self) -> str:
        """Short unique SSA-like name used by the text printer."""
        raise NotImplementedError  # abstract: every concrete record defines its name

    @property
    def op(self) -> str:
        """Operation name printed by `Graph.to_text`."""
        return type(self).__name__.lower()

    def params(self) -> str:
        """Static attributes that are not part of the node's identity, printed after the args."""
        return ""

    def check(self, graph) -> str | None:
        """Kind-specific verifier rule; returns a problem description or None."""
        return None

    def order_key(self) -> tuple:
        """Sort key used to break ties in the topological order (diffusers' execution order)."""
        step = getattr(self, "step", None)
        return (
            -1 if step is None else step,
            self.phase if step is not None else 0,
            _branch_rank(getattr(self, "branch", None)),
            getattr(self, "unit", -1),
            self.name,
        )


@attrs.frozen
class Input(Node):
    """A run input: `latents`, or the text embeddings of one CFG branch (`text.cond`)."""

    value: str

    @property
    def name(self) -> str:
        return f"in.{self.value}"

    def params(self) -> str:
        return self.value


@attrs.frozen
class Embed(Node):
    """Non-block work before the stack: patch embedding, RoPE, time and text condition embedding."""

    inputs: ClassVar[tuple[str, ...]] = ("latents", "text")
    phase: ClassVar[int] = 1
    step: int
    branch: str

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.embed"


@attrs.frozen
class Unit(Node):
    """One cache unit: blocks[start:stop] of the transformer stack."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    phase: ClassVar[int] = 1
    step: int
    branch: str
    unit: int
    blocks: tuple[int, int] = attrs.field(converter=tuple)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}"

    def params(self) -> str:
        return f"blocks={self.blocks[0]}:{self.blocks[1]}"

    def cell_state(self) -> tuple[tuple[int, str, int], str]:
        return (self.step, self.branch, self.unit), "C"


@attrs.frozen
class Head(Node):
    """Output norm, projection and unpatchify: hidden states to the noise prediction."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    phase: ClassVar[int] = 1
    step: int
    branch: str
    unit: ClassVar[int] = 10**9  # after every unit of its branch

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.head"


@attrs.frozen
class Guide(Node):
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""

    inputs: ClassVar[tuple[str, ...]] = ("cond", "uncond")
    phase: ClassVar[int] = 2
    step: int
    scale: float

    @property
    def name(self) -> str:
        return f"s{self.step}.guide"

    def params(self) -> str:
        return f"scale={self.scale!r}"


@attrs.frozen
class Update(Node):
    """Scheduler step x_t -> x_{t-1}; the step-end callback runs right after it."""

    inputs: ClassVar[tuple[str, ...]] = ("noise", "latents")
    phase: ClassVar[int] = 3
    step: int
    timestep: float

    @property
    def name(self) -> str:
        return f"s{self.step}.update"

    def params(self) -> str:
        return f"t={self.timestep!r}"


@attrs.frozen
class Output(Node):
    """The final latents of the run."""

    inputs: ClassVar[tuple[str, ...]] = ("latents",)
    phase: ClassVar[int] = 9

    @property
    def name(self) -> str:
        return "out"

    def order_key(self) -> tuple:
        return (10**9, 0, 0, 0, self.name)
