"""`ModelAdapter`: what the runtime needs from a model, so another transformer plugs in.

A plan's model-touching records (`Embed`, `Unit`, `Cell`, `Probe`, `Head`) carry a `model` id;
the run state maps each id to an adapter. `WanAdapter` implements this for diffusers'
`WanTransformer3DModel`; Wan2.2's second expert is a second adapter under another id.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class ModelAdapter(Protocol):
    """Run one model in pieces: `embed` -> `run_blocks(start, stop)`... -> `head`."""

    num_blocks: int
    model_id: str  # the id its records, residual keys and policy states carry

    @property
    def dtype(self) -> Any: ...

    def embed(self, latents: Any, timestep: Any, encoder_hidden_states: Any) -> Any:
        """The non-block prefix of a forward; its value is every unit's and the head's `ctx`."""

    def run_blocks(self, start: int, stop: int, hidden: Any, ctx: Any) -> Any:
        """blocks[start:stop] in order; the real output of the last block."""

    def head(self, hidden: Any, ctx: Any) -> Any:
        """The non-block suffix: hidden states to the model's prediction."""

    def signals(self, ctx: Any) -> dict[str, Any]:
        """The policy signals of one forward by name (a policy reads them from `CacheContext.signals`)."""

    def time_signals(self, timestep: Any, dtype: Any) -> dict[str, Any]:
        """The signals that depend only on the timestep and the weights (for folding ahead of time)."""

    def branch_context(self, branch: str, **info: Any) -> AbstractContextManager:
        """The model's cache context for one CFG branch's forward (diffusers' `cache_context`)."""

    def describe(self, latent_shape: tuple[int, ...]) -> dict[str, Any]:
        """{"fingerprint": this model's part of a plan's fingerprint (at least "model", "weights",
        "dtype"), "residual_shape": the shape of one residual at `latent_shape`}."""
