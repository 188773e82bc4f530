"""Compile a `Graph` once into a linear program, then run it with a small interpreter.

Like `torch.fx.Interpreter` or `eval_jaxpr`: values live in numbered slots; each instruction reads
its inputs from slots, writes its output to one slot, and frees every slot whose last use it was.
A cache cell is one instruction whichever path it takes, so every value is freed after its last
use on the path that ran. The hot loop never walks the graph. A kernel's error is re-raised with
the printed line of the node being executed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import attrs

from edit.graph import Cell, Effects, Exchange, Graph, Input, Node, Output, Prefetch, Unit, Update, verify
from edit.graph.text import node_line
from edit.passes.base import paused_gc

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
    """One step of the program: out = kernel(state, node, **{port: slots[slot].select}).

    `context` is the (step, branch, model) whose model cache context the node runs in (None: outside
    any; model None: the run's default model).
    """

    node: Node
    kernel: Callable[..., Any] = attrs.field(eq=False, repr=False)
    args: tuple[tuple[str, int, str | None], ...]
    out: int
    free: tuple[int, ...]
    context: tuple[int, str, str | None] | None = None


@attrs.frozen
class Program:
    """A compiled plan: instructions in execution order over `num_slots` value slots.

    `effects` maps each cell to the keys its paths read and write (`edit.graph.effects`);
    `num_units` is the number of units of one forward (what a policy's context reports).
    """

    graph: Graph = attrs.field(eq=False, repr=False)
    instrs: tuple[Instr, ...]
    num_slots: int
    input_slots: dict[str, int]
    output_slot: int
    effects: dict[Cell, Effects] = attrs.field(eq=False, repr=False, factory=dict)
    num_units: int = 0
    entry_keys: tuple = ()  # keys prefetched at the first cell: the caller may issue them before the run

    def __len__(self) -> int:
        return len(self.instrs)

    @property
    def has_cells(self) -> bool:
        return bool(self.effects)

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
        state.effects = self.effects
        enter = getattr(state, "enter_context", None)
        active: tuple | None = None
        with contextlib.ExitStack() as outer:
            scope: contextlib.ExitStack | None = None
            for ins in instrs:
                if enter is not None and ins.context != active:
                    if scope is not None:
                        scope.close()
                    scope = outer.enter_context(contextlib.ExitStack())
                    if ins.context is not None:
                        scope.enter_context(enter(*ins.context))
                    active = ins.context
                kwargs = {port: (slots[s] if sel is None else getattr(slots[s], sel)) for port, s, sel in ins.args}
                try:
                    value = ins.kernel(state, ins.node, **kwargs)
                except Exception as err:
                    raise _in_node(err, self.graph, ins.node) from err
                slots[ins.out] = value
                for s in ins.free:
                    slots[s] = None
                if type(ins.node) is Update and state.after_update(ins.node.step, ins.out, slots, self):
                    return ins.out
        return None


def _in_node(err: Exception, graph: Graph, node: Node) -> Exception:
    """`err` as an exception of the same type whose message ends with the node's printed line."""
    where = f"while executing {node_line(graph, node).splitlines()[0]}"
    if where in str(err):
        return err
    try:
        new = type(err)(f"{err}\n  {where}")
    except Exception:  # an exception type with another constructor: keep it, add a note
        err.add_note(where)
        return err
    return new


def compile_program(graph: Graph, *, check: bool = True, group: int | None = None) -> Program:
    """Linearize `graph` (verified first when `check`) into a `Program` with last-use frees.

    `group`: the CFG group of the rank this program runs on, for a plan placed by `place(cfg=2)`:
    the nodes of a branch placed on another group are left out (their values arrive through the
    step's `Exchange`). None: every node (a single-process run).
    """
    with paused_gc():
        return _compile(graph, check, group)


def placement(graph: Graph) -> dict[str, int]:
    """{branch: CFG group} of a plan placed by `place(cfg=2)`; empty for an unplaced plan."""
    exchanges = graph.nodes(Exchange)
    return dict(exchanges[0].placement) if exchanges else {}


def _compile(graph: Graph, check: bool, group: int | None) -> Program:
    if check:
        verify(graph)
    order = graph.order()
    placed = placement(graph) if group is not None else {}
    if placed:
        if group not in placed.values():
            raise ValueError(f"group: this plan places its branches on CFG groups {sorted(set(placed.values()))}, "
                             f"got {group!r}")
        order = [n for n in order if placed.get(getattr(n, "branch", None), group) == group]
    slot_of = {node: i for i, node in enumerate(order)}
    inputs = {node: {port: src for port, src in graph.inputs_of(node).items() if src[0] in slot_of}
              for node in order}
    last_use: dict[int, int] = {}
    for pos, node in enumerate(order):
        for producer, _ in inputs[node].values():
            last_use[slot_of[producer]] = pos
    outputs = [n for n in order if isinstance(n, Output)]
    if len(outputs) != 1:
        raise ValueError(f"graph: expected exactly one Output node, found {len(outputs)}")
    frees: dict[int, list[int]] = {}
    for slot, pos in last_use.items():
        if slot != slot_of[outputs[0]]:
            frees.setdefault(pos, []).append(slot)
    for pos, node in enumerate(order):  # a value nobody reads is dropped at once
        if slot_of[node] not in last_use and not isinstance(node, (Output, Update)):
            frees.setdefault(pos, []).append(slot_of[node])
    instrs = []
    effects = {}
    default_model = graph.spec.model if graph.spec is not None else None  # a prefetch runs in its step's context
    for pos, node in enumerate(order):
        args = tuple(sorted((port, slot_of[p], sel) for port, (p, sel) in inputs[node].items()))
        branch = getattr(node, "branch", None)
        context = (node.step, branch, getattr(node, "model", default_model)) if branch is not None else None
        instrs.append(Instr(node, kernel_for(node), args, slot_of[node], tuple(sorted(frees.get(pos, ()))), context))
        if isinstance(node, Cell):
            effects[node] = graph.effects(node)
    input_slots = {n.value: slot_of[n] for n in order if isinstance(n, Input)}
    first = next(((n.step, n.branch, n.unit) for n in order if isinstance(n, (Unit, Cell))), None)
    entry = tuple(n.key for n in order if isinstance(n, Prefetch) and n.issue == first)
    return Program(graph, tuple(instrs), len(order), input_slots, slot_of[outputs[0]], effects,
                   graph.units_per_forward(), entry)
