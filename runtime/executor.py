"""Compile a `Graph` once into a linear program, then run it with a small interpreter.

Like `torch.fx.Interpreter` or `eval_jaxpr`: values live in numbered slots; each instruction
reads its inputs from slots, writes its output to one slot, and frees every slot whose last
use it was. The hot loop never walks the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from edit.graph import COMPUTE, GUARDS, Graph, Input, Node, Output, Update, verify

#: node type -> kernel(state, node, **inputs) -> value. Extended with `register_kernel`.
KERNELS: dict[type, Callable[..., Any]] = {}


def register_kernel(node_type: type) -> Callable:
    """Decorator registering the runtime implementation of a node kind (custom nodes included)."""
    if not (isinstance(node_type, type) and issubclass(node_type, Node)):
        raise TypeError(f"node_type: expected a subclass of edit.graph.Node, got {node_type!r}")

    def deco(fn: Callable) -> Callable:
        KERNELS[node_type] = fn
        return fn
    return deco


def kernel_for(node: Node) -> Callable[..., Any]:
    for cls in type(node).__mro__:
        if cls in KERNELS:
            return KERNELS[cls]
    raise ValueError(f"%{node.name}: no kernel registered for node kind {type(node).__name__} "
                     f"(known: {sorted(k.__name__ for k in KERNELS)}); use edit.runtime.register_kernel")


@attrs.frozen
class Instr:
    """One step of the program: out = kernel(state, node, **{port: slots[slot].select})."""

    node: Node
    kernel: Callable[..., Any] = attrs.field(eq=False, repr=False)
    args: tuple[tuple[str, int, str | None], ...]
    out: int
    free: tuple[int, ...]
    guard: tuple[int, bool] | None = None  # (decision slot, run when it equals this)


@attrs.frozen
class Program:
    """A compiled plan: instructions in execution order over `num_slots` value slots."""

    graph: Graph = attrs.field(eq=False, repr=False)
    instrs: tuple[Instr, ...]
    num_slots: int
    input_slots: dict[str, int]
    output_slot: int

    def __len__(self) -> int:
        return len(self.instrs)

    def run(self, state: Any) -> Any:
        """Execute on `state` (kernels' environment; see `RunState`); return the output value.

        After an `Update`, `state.after_update(step, value, slots, program)` may replace the new
        latents or inputs (step-end callbacks) and returns True to stop the run early (interrupt).
        """
        slots: list[Any] = [None] * self.num_slots
        stopped_at = self.execute(state, self.instrs, slots)
        return slots[self.output_slot] if stopped_at is None else slots[stopped_at]

    def execute(self, state: Any, instrs: tuple[Instr, ...], slots: list[Any]) -> int | None:
        """Run `instrs` over `slots`; returns the output slot of the Update that stopped the run, if any."""
        hooks = state.hooks
        for ins in instrs:
            if ins.guard is not None and slots[ins.guard[0]] is not ins.guard[1]:
                continue
            kwargs = {port: (slots[s] if sel is None else getattr(slots[s], sel)) for port, s, sel in ins.args}
            if hooks:
                kwargs = hooks.before(state, ins.node, kwargs)
            value = ins.kernel(state, ins.node, **kwargs)
            if hooks:
                value = hooks.after(state, ins.node, value)
            slots[ins.out] = value
            for s in ins.free:
                slots[s] = None
            if type(ins.node) is Update and state.after_update(ins.node.step, ins.out, slots, self):
                return ins.out
        return None


def compile_program(graph: Graph, *, check: bool = True) -> Program:
    """Linearize `graph` (verified first when `check`) into a `Program` with last-use frees."""
    if check:
        verify(graph)
    order = graph.order()
    slot_of = {node: i for i, node in enumerate(order)}
    inputs = {node: graph.inputs_of(node) for node in order}
    guards = {node: [(u, d["kind"]) for u, d in graph.in_edges(node, kind=None) if d["kind"] in GUARDS]
              for node in order}
    last_use: dict[int, int] = {}
    for pos, node in enumerate(order):
        for producer in [p for p, _ in inputs[node].values()] + [u for u, _ in guards[node]]:
            last_use[slot_of[producer]] = pos
    frees: dict[int, list[int]] = {}
    outputs = [n for n in order if isinstance(n, Output)]
    if len(outputs) != 1:
        raise ValueError(f"graph: expected exactly one Output node, found {len(outputs)}")
    for slot, pos in last_use.items():
        if slot != slot_of[outputs[0]]:
            frees.setdefault(pos, []).append(slot)
    instrs = []
    for pos, node in enumerate(order):
        args = tuple(sorted((port, slot_of[p], sel) for port, (p, sel) in inputs[node].items()))
        if len(guards[node]) > 1:
            raise ValueError(f"%{node.name}: guarded by {len(guards[node])} decisions; at most one is allowed")
        guard = (slot_of[guards[node][0][0]], guards[node][0][1] == COMPUTE) if guards[node] else None
        instrs.append(Instr(node, kernel_for(node), args, slot_of[node], tuple(sorted(frees.get(pos, ()))), guard))
    input_slots = {n.value: slot_of[n] for n in order if isinstance(n, Input)}
    return Program(graph, tuple(instrs), len(order), input_slots, slot_of[outputs[0]])
