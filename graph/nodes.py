"""Node records of the EDiT IR.

Every node is a frozen attrs record identified by its fields (step, branch, unit, model, ...), never
by a nested structure: neighbours are edges of the `Graph`. Records are hashable, so the record
itself is the networkx node. Every field a record prints is one its kernel honours.

A cached unit is one structured region, a `Cell` (like `cond` in a jaxpr): its decision and its two
paths — compute (run the blocks, save the residual) and reuse (load the residual and add it,
recomputing on a store miss) — live in the one record, so the executor frees values after the cell
whichever path ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs

if TYPE_CHECKING:
    from edit.graph.core import Graph

#: CFG branch names, as diffusers' cache contexts call them.
BRANCHES = ("cond", "uncond")

#: The model id of a single-transformer pipeline; records of another model (Wan2.2's second
#: expert) carry their own id, and so do their residual keys.
DEFAULT_MODEL = "transformer"

#: Edge kinds: `data` carries a value into a port; `prefetch` ties a `Prefetch` to the cell whose
#: read it stages. (`reuse` only names the drawn edge from a residual's source cell to its reader.)
DATA, PREFETCH, REUSE = "data", "prefetch", "reuse"
EDGE_KINDS = (DATA, PREFETCH)

#: Cell modes: always compute, always reuse (a static schedule), or ask the policy at run time.
COMPUTE, REUSE_MODE, DECIDE = "compute", "reuse", "decide"
CELL_MODES = (COMPUTE, REUSE_MODE, DECIDE)

#: What a data edge may `select` of an embed's value: the hidden states the first unit runs on. The
#: rest of that value is the model's context, opaque to the IR: its fields are the adapter's (Wan's
#: are `edit.runtime.WanAdapter.embed_outputs`), so the IR names no model's fields.
EMBED_OUTPUTS = ("hidden",)


_RANKS = {None: -1, **{b: i for i, b in enumerate(BRANCHES)}}


def _branch_rank(branch: str | None) -> int:
    return _RANKS.get(branch, len(BRANCHES))


def _model_suffix(model: str) -> str:
    return "" if model == DEFAULT_MODEL else f" model={model}"


@attrs.frozen(order=False, cache_hash=True)
class Node:
    """Base of every node record.

    `inputs` names the data ports a node must receive, `optional` those it may receive, `outputs`
    the attributes of its value a data edge may `select` (the verifier checks all three); `phase`
    and `sub` order node kinds inside one step and one cell for the deterministic order.
    """

    inputs: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[int] = 0
    sub: ClassVar[int] = 0

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

    def region(self, graph: Graph) -> list[str]:
        """Lines of a nested region (a cell's paths), printed indented under the node."""
        return []

    def check(self, graph: Graph) -> str | None:
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


@attrs.frozen(cache_hash=True)
class Input(Node):
    """A run input: `latents`, the text embeddings of one CFG branch (`text.cond`), or an image
    condition (`condition`, `mask`, `image`: `RunSpec.conditions`)."""

    value: str

    @property
    def name(self) -> str:
        return f"in.{self.value}"

    def params(self) -> str:
        return self.value


@attrs.frozen(cache_hash=True)
class Embed(Node):
    """Non-block work before the stack: patch embedding, RoPE, time and text condition embedding.

    `branch` selects the diffusers cache context (`transformer.cache_context(branch)`) the
    branch's nodes run in. An image-to-video run also feeds it its `RunSpec.conditions`.
    """

    inputs: ClassVar[tuple[str, ...]] = ("latents", "text")
    optional: ClassVar[tuple[str, ...]] = ("condition", "mask", "image")
    outputs: ClassVar[tuple[str, ...]] = EMBED_OUTPUTS
    phase: ClassVar[int] = 1
    step: int
    branch: str
    model: str = DEFAULT_MODEL

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.embed"

    def params(self) -> str:
        return _model_suffix(self.model).strip()


@attrs.frozen(cache_hash=True)
class _Blocks(Node):
    """Base of the nodes that run blocks[start:stop] of one model."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    phase: ClassVar[int] = 1
    step: int
    branch: str

    def params(self) -> str:
        return f"blocks={self.blocks[0]}:{self.blocks[1]}" + _model_suffix(self.model)


@attrs.frozen(cache_hash=True)
class Unit(_Blocks):
    """One uncached block group: blocks[start:stop] of the transformer stack, always computed."""

    sub: ClassVar[int] = 3
    unit: int
    blocks: tuple[int, int] = attrs.field(converter=tuple)
    model: str = DEFAULT_MODEL

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}"


@attrs.frozen(cache_hash=True)
class Probe(_Blocks):
    """First-Block-Cache probe: block 0 always runs; yields its output and residual (out0 - x)."""

    outputs: ClassVar[tuple[str, ...]] = ("hidden", "residual")
    unit: ClassVar[int] = -1
    blocks: tuple[int, int] = attrs.field(default=(0, 1), converter=tuple)
    model: str = DEFAULT_MODEL

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.probe"


@attrs.frozen(cache_hash=True)
class Cell(_Blocks):
    """A cached unit as one region: decide, then compute (run blocks, save) or reuse (load, add).

    `mode`: "compute", "reuse" (a static schedule) or "decide" (the bound policy decides at run
    time). `consult`: the policy still sees this cell (its state advances; hooks fire) although
    `mode` fixes the path — e.g. a unit's first step, which has nothing to reuse. `source`: for a
    static reuse, the step whose residual is read (None: the latest one stored at run time).
    `pin`: the cell also keeps the residual it applied (computed, or reused) under a step key, so a
    reuse rerouted to this step still reads it after a newer step overwrote the unit's latest
    residual, and later generations can read it. `window`: a reuse across generations — the mean of
    the residuals those generations kept for this same step (the ones the store still has; with
    none, the cell computes).
    """

    optional: ClassVar[tuple[str, ...]] = ("probe",)
    sub: ClassVar[int] = 3
    unit: int
    blocks: tuple[int, int] = attrs.field(converter=tuple)
    mode: str = DECIDE
    consult: bool = False
    source: int | None = None
    pin: bool = False
    generation: int = 0
    model: str = DEFAULT_MODEL
    window: tuple[int, ...] = attrs.field(default=(), converter=tuple)

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.u{self.unit}"

    @property
    def cell(self) -> tuple[int, str, int]:
        return (self.step, self.branch, self.unit)

    def params(self) -> str:
        out = f"blocks={self.blocks[0]}:{self.blocks[1]} mode={self.mode}"
        if self.consult:
            out += " consult"
        if self.pin:
            out += " pin"
        if self.mode == REUSE_MODE and self.source is not None:
            out += f" source=s{self.source}"
        if self.window:
            out += f" window={list(self.window)}"
        return out + _model_suffix(self.model)

    def region(self, graph: Graph) -> list[str]:
        fx = graph.effects(self)

        def keys(found: tuple) -> str:
            return ", ".join(repr(k) for k in found)
        lines = []
        if fx.compute_writes:
            lines.append(f"compute: run blocks {self.blocks[0]}:{self.blocks[1]}; save {keys(fx.compute_writes)}")
        if self.window:
            lines.append(f"reuse: hidden + mean of the found of load {keys(fx.reads)}; save {keys(fx.reuse_writes)}; "
                         "none found: run the blocks")
        elif fx.reads:
            saved = "the latest" if self.source is None else f"saved at s{self.source}"
            keep = f"; save {keys(fx.reuse_writes)}" if fx.reuse_writes else ""
            lines.append(f"reuse: hidden + load {keys(fx.reads)} ({saved}){keep}; on a miss run the blocks, "
                         f"save {keys(fx.miss_writes)}")
        return lines

    def check(self, graph: Graph) -> str | None:
        if self.mode not in CELL_MODES:
            return f"mode {self.mode!r} is not one of {CELL_MODES}"
        if self.source is not None and self.mode != REUSE_MODE:
            return f"source=s{self.source} on a cell in mode {self.mode} (only a reuse reads a source)"
        if self.window:
            if self.mode != REUSE_MODE or self.source is not None:
                return f"window={list(self.window)} on a cell in mode {self.mode} (a window is read by a reuse)"
            if self.generation in self.window:
                return f"window={list(self.window)} holds the cell's own generation {self.generation}"
            return None
        if self.mode != COMPUTE and graph.get(f"s{self.step}.{self.branch}.probe") is not None \
                and "probe" not in graph.inputs_of(self):
            return ("its forward has a first-block probe, but no probe edge reaches this cell (the policy that "
                    "decides it reads the probe's residual)")
        if self.mode == COMPUTE:
            return None
        earlier = graph.previous_cell(self)
        if earlier is None:
            return (f"mode {self.mode} but no earlier step of ({self.branch}, u{self.unit}) stores a residual "
                    "to reuse (the first step of a unit must compute)")
        if self.mode == REUSE_MODE and self.source is not None:
            src = graph.cell_at(self.source, self.branch, self.unit, self.model)
            if src is None or src.step >= self.step or src.generation != self.generation:
                return f"source=s{self.source}: no earlier cell of ({self.branch}, u{self.unit}) at that step"
            if src.mode != COMPUTE:
                return f"source=s{self.source}: that cell is in mode {src.mode}, it does not always store a residual"
            if not src.pin:
                writer = graph.latest_writer(self)
                if writer is not src:
                    return (f"source=s{self.source}: its residual is overwritten by %{writer.name} before this "
                            f"read (pin the source cell, or read s{writer.step})")
        return None


@attrs.frozen(cache_hash=True)
class Prefetch(Node):
    """Stage the residual a cell will read toward the device ahead of the read (`prefetch` edge to
    that cell), so a slow tier's transfer overlaps compute. `issue` is the (step, branch, unit)
    cell before which it runs: the scheduler's choice, never before the key's latest write."""

    phase: ClassVar[int] = 1
    sub: ClassVar[int] = -1  # before everything of the issuing cell
    step: int
    branch: str
    unit: int
    key: tuple = attrs.field(converter=tuple)
    issue: tuple[int, str, int] = attrs.field(converter=tuple)

    @property
    def name(self) -> str:
        # a window read stages one key per generation: a step key of the reader's own step
        window = len(self.key) == 7 and self.key[4] == self.step
        return f"s{self.step}.{self.branch}.u{self.unit}.prefetch" + (f".g{self.key[1]}" if window else "")

    def params(self) -> str:
        return f"key={self.key!r} at=s{self.issue[0]}.{self.issue[1]}.u{self.issue[2]}"

    def order_key(self) -> tuple:
        step, branch, unit = self.issue
        return (step, self.phase, _branch_rank(branch), unit, self.sub, self.name)

    def check(self, graph: Graph) -> str | None:
        readers = [v for v, _ in graph.out_edges(self, kind=PREFETCH)]
        if len(readers) != 1 or not isinstance(readers[0], Cell) or readers[0].cell != (self.step, self.branch, self.unit):
            return "a prefetch needs exactly one prefetch edge, to the cell it is named after"
        reader = readers[0]
        if reader.mode == COMPUTE:
            return f"prefetches for %{reader.name}, which always computes (it reads nothing)"
        if not graph.reads(reader, self.key):
            return f"key {self.key!r} is not a key %{reader.name} reads ({graph.read_keys(reader)!r})"
        if self.order_key() >= reader.order_key():
            return f"issued at s{self.issue[0]}.{self.issue[1]}.u{self.issue[2]}, not before its read"
        writer = graph.latest_writer(reader, key=self.key)
        if writer is not None and self.order_key() <= writer.order_key():
            return (f"issued at s{self.issue[0]}.{self.issue[1]}.u{self.issue[2]}, before %{writer.name} writes "
                    "the residual it stages")
        return None


@attrs.frozen(cache_hash=True)
class Head(Node):
    """Output norm, projection and unpatchify: hidden states to the noise prediction."""

    inputs: ClassVar[tuple[str, ...]] = ("hidden", "ctx")
    phase: ClassVar[int] = 1
    step: int
    branch: str
    model: str = DEFAULT_MODEL
    unit: ClassVar[int] = 10**9  # after every unit of its branch

    @property
    def name(self) -> str:
        return f"s{self.step}.{self.branch}.head"

    def params(self) -> str:
        return _model_suffix(self.model).strip()


@attrs.frozen(cache_hash=True)
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

    def check(self, graph: Graph) -> str | None:
        spec = graph.spec
        if spec is not None and self.scale != spec.guidance_at(self.step):
            return f"scale {self.scale!r} differs from the spec's guidance of step {self.step}, {spec.guidance_at(self.step)!r}"
        return None


def _placement(value) -> tuple[tuple[str, int], ...]:
    return tuple((str(branch), int(group)) for branch, group in value)


@attrs.frozen(cache_hash=True)
class Exchange(Node):
    """CFG-parallel: each branch's noise prediction is computed by the ranks of its CFG group
    (`placement`: (branch, group) pairs) and brought to every rank here, one all-gather per step,
    so every rank guides and steps the scheduler identically. A rank's program runs only the
    nodes of the branches placed on its group; `place(cfg=2)` inserts this node before each Guide."""

    inputs: ClassVar[tuple[str, ...]] = ("cond", "uncond")
    outputs: ClassVar[tuple[str, ...]] = ("cond", "uncond")
    phase: ClassVar[int] = 2
    sub: ClassVar[int] = -1  # before the step's Guide
    step: int
    placement: tuple[tuple[str, int], ...] = attrs.field(converter=_placement)

    @property
    def name(self) -> str:
        return f"s{self.step}.exchange"

    def params(self) -> str:
        return "placement=" + ",".join(f"{branch}@{group}" for branch, group in self.placement)

    def group_of(self, branch: str) -> int | None:
        return dict(self.placement).get(branch)

    def check(self, graph: Graph) -> str | None:
        branches = [b for b, _ in self.placement]
        if sorted(branches) != sorted(self.inputs) or len(set(branches)) != len(branches):
            return f"placement {self.params()[10:]} must place each of {self.inputs} once"
        if any(group < 0 for _, group in self.placement):
            return f"placement {self.params()[10:]}: a CFG group is an int >= 0"
        return None


@attrs.frozen(cache_hash=True)
class Update(Node):
    """Scheduler step x_t -> x_{t-1} at the spec's timestep of `step`; the step-end callback runs right after it."""

    inputs: ClassVar[tuple[str, ...]] = ("noise", "latents")
    phase: ClassVar[int] = 3
    step: int

    @property
    def name(self) -> str:
        return f"s{self.step}.update"


@attrs.frozen(cache_hash=True)
class Output(Node):
    """The final latents of the run."""

    inputs: ClassVar[tuple[str, ...]] = ("latents",)
    phase: ClassVar[int] = 9

    @property
    def name(self) -> str:
        return "out"

    def order_key(self) -> tuple:
        return (10**9, 0, 0, 0, 0, self.name)
