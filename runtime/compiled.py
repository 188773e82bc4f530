"""Compiled plans: the regions of a plan run as `torch.compile(fullgraph=True)` graphs.

A region is a piece of work the plan repeats: the embed, a run of n blocks (a unit), a run of n
blocks with its residual (a cell's compute path and save), a reuse's add, the head. Each is
compiled once and reused at every step, branch and block range where it occurs: the timestep,
the hidden states and the residual are inputs, never constants, and a run of n blocks takes the
blocks as an argument, so blocks 3:4 reuse the graph of blocks 0:1. Every region of every adapter
gets its own code object, so each has its own dynamo cache: a recompile (a second cache entry
for one region) is counted exactly, and one region never eats another's recompile limit.

A folded plan has no data-dependent control flow left, so its run is a fixed sequence of
compiled graphs; a run-time cell keeps its decision on the host and both of its paths are
compiled. `CompileStats` reads dynamo's counters around each call.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any

import attrs
import torch

#: torch.compile modes a plan accepts ("reduce-overhead" captures CUDA graphs on a GPU).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_mode(mode: Any) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return mode


def _fresh(fn: Callable, name: str) -> Callable:
    """`fn` (a plain function) with a code object of its own, named `name`."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _blocks(blocks, hidden, encoder_hidden, e0, rotary):
    for block in blocks:
        hidden = block(hidden, encoder_hidden, e0, rotary)
    return hidden


def _blocks_residual(blocks, hidden, encoder_hidden, e0, rotary):
    out = hidden
    for block in blocks:
        out = block(out, encoder_hidden, e0, rotary)
    return out, out - hidden


def _add(hidden, residual):
    return hidden + residual


def _embed(adapter, *args):
    return type(adapter).embed(adapter, *args)


def _head(adapter, hidden, ctx):
    return type(adapter).head(adapter, hidden, ctx)


@attrs.define
class CompileStats:
    """dynamo's counters over compiled calls: graphs compiled, graph breaks and recompiles (a
    second cache entry of one region), the call's wall time, and totals since `enable_compile`."""

    graphs: int = 0
    graph_breaks: int = 0
    recompiles: int = 0
    seconds: float = 0.0
    calls: int = 0
    total_graphs: int = 0
    total_graph_breaks: int = 0
    total_recompiles: int = 0
    regions: int = 0

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Compiler:
    """The compiled regions of one pipeline (every adapter's), and the counters around its calls."""

    def __init__(self, mode: str = "default", *, fullgraph: bool = True):
        self.mode = check_mode(mode)
        self.fullgraph = fullgraph
        self.stats = CompileStats()
        self._functions: dict[tuple, Callable] = {}
        self._codes: list[types.CodeType] = []
        self._before: tuple | None = None

    def function(self, key: tuple, fn: Callable) -> Callable:
        """The compiled `fn` for region `key` (made at first use, with its own code object)."""
        compiled = self._functions.get(key)
        if compiled is None:
            fresh = _fresh(fn, "edit_" + "_".join(str(k).replace(":", "_").replace("-", "_") for k in key))
            self._codes.append(fresh.__code__)
            compiled = torch.compile(fresh, fullgraph=self.fullgraph, dynamic=False, mode=self.mode)
            self._functions[key] = compiled
        return compiled

    def adapter(self, inner: Any) -> CompiledAdapter:
        return CompiledAdapter(inner, self)

    # -- counters ----------------------------------------------------------------------------------
    def _entries(self) -> int:
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list

        return sum(max(len(_debug_get_cache_entry_list(code)) - 1, 0) for code in self._codes)

    @staticmethod
    def _counters() -> tuple[int, int]:
        from torch._dynamo.utils import counters

        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())

    def begin_call(self) -> None:
        self._before = (*self._counters(), self._entries(), time.perf_counter())

    def end_call(self) -> CompileStats:
        graphs, breaks = self._counters()
        g0, b0, r0, t0 = self._before
        s = self.stats
        s.graphs, s.graph_breaks, s.recompiles = graphs - g0, breaks - b0, self._entries() - r0
        s.seconds, s.calls = time.perf_counter() - t0, s.calls + 1
        s.total_graphs += s.graphs
        s.total_graph_breaks += s.graph_breaks
        s.total_recompiles += s.recompiles
        s.regions = len(self._functions)
        return s


class CompiledAdapter:
    """A model adapter whose embed, block runs, residuals, adds and head are compiled regions
    (`Compiler.function`); everything else is the inner adapter's."""

    def __init__(self, inner: Any, compiler: Compiler):
        self.inner = inner
        self.compiler = compiler
        self._id = getattr(inner, "model_id", "transformer")
        # CUDA graphs (mode "reduce-overhead") overwrite a region's outputs at its next replay:
        # what outlives a region (a stored residual, the next block's input) is copied out
        self._copy = compiler.mode == "reduce-overhead"

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "compiler", "_id", "_copy"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _out(self, value):
        if not self._copy:
            return value
        if isinstance(value, tuple):
            return tuple(v.clone() for v in value)
        return value.clone()

    def embed(self, *args: Any) -> Any:
        ctx = self.compiler.function((self._id, "embed", len(args)), _embed)(self.inner, *args)
        if self._copy:
            for field in ("hidden", "e", "e0", "encoder_hidden"):
                setattr(ctx, field, getattr(ctx, field).clone())
            ctx.rotary = tuple(r.clone() for r in ctx.rotary)
        return ctx

    def run_blocks(self, start: int, stop: int, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        fn = self.compiler.function((self._id, "blocks", stop - start), _blocks)
        return self._out(fn(tuple(self.inner.blocks[start:stop]), hidden, ctx.encoder_hidden, ctx.e0, ctx.rotary))

    def run_blocks_residual(self, start: int, stop: int, hidden: torch.Tensor, ctx: Any):
        """(output, output - hidden) of blocks[start:stop]: a cell's compute path and its save."""
        fn = self.compiler.function((self._id, "blocks_residual", stop - start), _blocks_residual)
        return self._out(fn(tuple(self.inner.blocks[start:stop]), hidden, ctx.encoder_hidden, ctx.e0, ctx.rotary))

    def add_residual(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self._out(self.compiler.function(("add",), _add)(hidden, residual))

    def head(self, hidden: torch.Tensor, ctx: Any) -> torch.Tensor:
        return self._out(self.compiler.function((self._id, "head"), _head)(self.inner, hidden, ctx))

    def forward(self, latents, timestep, encoder_hidden_states, encoder_hidden_states_image=None):
        ctx = self.embed(latents, timestep, encoder_hidden_states, encoder_hidden_states_image)
        return self.head(self.run_blocks(0, self.num_blocks, ctx.hidden, ctx), ctx)
