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

#: Edge kinds. `compute`/`skip` edges leave a `Decide` and guard the two paths; `reuse` links a
#: residual's `Save` to the `Load` that reads it; `prefetch` links a `Prefetch` to its `Load`.
DATA, COMPUTE, SKIP, REUSE, PREFETCH = "data", "compute", "skip", "reuse", "prefetch"
EDGE_KINDS = (DATA, COMPUTE, SKIP, REUSE, PREFETCH)
GUARDS = (COMPUTE, SKIP)


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
    optional: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[int] = 0
    sub: ClassVar[int] = 0  # order inside one unit: decide, load, reuse, unit, save, merge

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
            self.sub,
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
    sub: ClassVar[int] = 3
    step: int
    branch: str
    unit: int
    blocks: tuple[int, int] = attrs.field(converter=tuple)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}"

    def params(self) -> str:
        return f"blocks={self.blocks[0]}:{self.blocks[1]}"

    def cell_state(self, graph) -> tuple[tuple[int, str, int], str]:
        return (self.step, self.branch, self.unit), "C"


@attrs.frozen
class Probe(Node):
    """First-Block-Cache probe: block 0 always runs; yields its output and residual (out0 - x)."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    phase: ClassVar[int] = 1
    unit: ClassVar[int] = -1
    step: int
    branch: str
    blocks: tuple[int, int] = attrs.field(default=(0, 1), converter=tuple)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.probe"

    def params(self) -> str:
        return f"blocks={self.blocks[0]}:{self.blocks[1]}"


@attrs.frozen
class Decide(Node):
    """A cache decision for one unit: True computes it, False reuses its stored residual."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    optional: ClassVar[tuple[str, ...]] = ("probe",)
    phase: ClassVar[int] = 1
    sub: ClassVar[int] = 0
    step: int
    branch: str
    unit: int
    policy: str
    forced: bool = False  # the policy is consulted (its state advances) but the unit always computes

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}.decide"

    def params(self) -> str:
        return f"policy={self.policy}" + (" forced" if self.forced else "")

    def cell_state(self, graph) -> tuple[tuple[int, str, int], str]:
        return (self.step, self.branch, self.unit), "C" if self.forced else "?"

    def check(self, graph) -> str | None:
        kinds = {d["kind"] for _, _, d in graph.nx.out_edges(self, data=True)}
        missing = [k for k in (GUARDS[:1] if self.forced else GUARDS) if k not in kinds]
        return f"decision has no {missing[0]} path" if missing else None


def _residual_key(node) -> tuple[int, str, int]:
    return (node.generation, node.branch, node.unit)


@attrs.frozen
class _ResidualAccess(Node):
    """Base of the nodes that touch one stored residual: its cell and `key` = (generation, branch, unit)."""

    suffix: ClassVar[str] = ""
    phase: ClassVar[int] = 1
    step: int
    branch: str
    unit: int
    generation: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        return _residual_key(self)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}.{self.suffix}"

    def params(self) -> str:
        return f"key={self.key!r}"


@attrs.frozen
class Save(_ResidualAccess):
    """Store the unit's residual (output - input) under `key` = (generation, branch, unit)."""

    inputs: ClassVar[tuple[str, ...]] = ("input", "output")
    suffix: ClassVar[str] = "save"
    sub: ClassVar[int] = 4


@attrs.frozen
class Load(_ResidualAccess):
    """Read the residual stored under `key`; None (a miss) makes the reuse recompute the unit.

    `generation` older than the run's own marks a read of an earlier generation (cross-segment
    reuse), which needs no `Save` in this graph.
    """

    suffix: ClassVar[str] = "load"
    sub: ClassVar[int] = 1

    def check(self, graph) -> str | None:
        own = graph.spec.generation if graph.spec is not None else 0
        if self.generation < own:
            return None
        sources = [u for u, _, d in graph.nx.in_edges(self, data=True) if d["kind"] == REUSE]
        if not any(isinstance(u, Save) and u.key == self.key and u.step < self.step for u in sources):
            return f"reads {self.key!r} but no earlier Save of that key feeds it (reuse edge)"
        return None


@attrs.frozen
class Prefetch(_ResidualAccess):
    """Start moving the residual under `key` toward the device ahead of its `Load` (the `prefetch`
    edge), so a slow tier's transfer overlaps compute. `issue` is the (step, branch, unit) cell before
    whose decision it runs: the scheduler's choice, never before the key's latest `Save`."""

    suffix: ClassVar[str] = "prefetch"
    sub: ClassVar[int] = -1  # before everything of the issuing cell
    issue: tuple[int, str, int] = attrs.field(default=None, converter=lambda v: None if v is None else tuple(v))

    def params(self) -> str:
        where = "" if self.issue is None else f" at=s{self.issue[0]}.{self.issue[1]}.u{self.issue[2]}"
        return f"key={self.key!r}{where}"

    def order_key(self) -> tuple:
        step, branch, unit = self.issue if self.issue is not None else (self.step, self.branch, self.unit)
        return (step, self.phase, _branch_rank(branch), unit, self.sub, self.name)

    def check(self, graph) -> str | None:
        loads = [v for _, v, d in graph.nx.out_edges(self, data=True) if d["kind"] == PREFETCH]
        if len(loads) != 1 or not isinstance(loads[0], Load) or loads[0].key != self.key \
                or (loads[0].step, loads[0].branch, loads[0].unit) != (self.step, self.branch, self.unit):
            return "a prefetch needs exactly one prefetch edge to the Load of its own cell and key"
        if self.issue is not None and self.order_key() >= loads[0].order_key():
            return f"issued at s{self.issue[0]}.{self.issue[1]}.u{self.issue[2]}, not before its load"
        return None


@attrs.frozen
class Reuse(Node):
    """Unit output = unit input + stored residual; recomputes blocks[start:stop] on a miss."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "residual", "ctx")
    phase: ClassVar[int] = 1
    sub: ClassVar[int] = 2
    step: int
    branch: str
    unit: int
    blocks: tuple[int, int] = attrs.field(converter=tuple)
    generation: int = 0
    source: int | None = None  # the step whose residual is reused, when known at compile time

    @property
    def key(self) -> tuple[int, str, int]:
        return _residual_key(self)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}.reuse"

    def params(self) -> str:
        src = "" if self.source is None else f" source=s{self.source}"
        return f"blocks={self.blocks[0]}:{self.blocks[1]}{src}"

    def cell_state(self, graph) -> tuple[tuple[int, str, int], str]:
        own = graph.spec.generation if graph.spec is not None else 0
        return (self.step, self.branch, self.unit), ("R" if self.generation < own else "S")


@attrs.frozen
class Merge(Node):
    """The unit's output: the computed value or the reused one, whichever path ran."""

    optional: ClassVar[tuple[str, ...]] = ("computed", "reused")
    phase: ClassVar[int] = 1
    sub: ClassVar[int] = 5
    step: int
    branch: str
    unit: int

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}.out"

    def check(self, graph) -> str | None:
        ports = {d["port"] for _, d in graph.in_edges(self, DATA)}
        return None if ports else "merge has neither a computed nor a reused input"


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
        return (10**9, 0, 0, 0, 0, self.name)
