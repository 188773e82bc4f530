"""EDiT runtime: model adapters, the plan compiler/interpreter, its kernels, the cache controller."""

from edit.runtime import kernels as _kernels  # noqa: F401  (registers the built-in kernels)
from edit.runtime.adapter import ModelAdapter
from edit.runtime.executor import KERNELS, Instr, Program, compile_program, kernel_for, register_kernel
from edit.runtime.state import RunState, StepEnd
from edit.runtime.wan import EmbedOutput, WanAdapter

__all__ = ["KERNELS", "EmbedOutput", "Instr", "ModelAdapter", "Program", "RunState", "StepEnd", "WanAdapter",
           "compile_program", "kernel_for", "register_kernel"]
