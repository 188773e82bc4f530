"""EDiT runtime: the Wan model adapter, the plan compiler/interpreter and its kernels."""

from edit.runtime import kernels as _kernels  # noqa: F401  (registers the built-in kernels)
from edit.runtime.executor import KERNELS, Instr, Program, compile_program, kernel_for, register_kernel
from edit.runtime.state import RunState, StepEnd
from edit.runtime.wan import EmbedOutput, WanAdapter

__all__ = ["KERNELS", "EmbedOutput", "Instr", "Program", "RunState", "StepEnd", "WanAdapter",
           "compile_program", "kernel_for", "register_kernel"]
