"""Offloading hooks on a model whose submodules the runtime calls directly.

accelerate (`enable_model_cpu_offload`, `cpu_offload`, `dispatch_model`) and diffusers' group
offloading attach hooks to a module's `forward`: they bring its weights to the execution device before
the call and may send them back after. The adapter runs `embed`, the blocks and `head` itself and
never calls the transformer's `forward`, so the hooks on the transformer itself would never fire and
its top-level weights would stay where the offloader parked them. `forward_hooks` runs them around a
region instead. Hooks on submodules (blocks, leaf layers) fire by themselves, as the adapter calls
those modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: diffusers hook-registry entries that move weights (run around the region). Lazy-prefetch group
#: offloading learns the layer order from exactly one forward, which a whole run is not: refused.
_DIFFUSERS_OFFLOAD_HOOKS = ("group_offloading",)
_UNSUPPORTED = ("lazy_prefetch_group_offloading",)


def _registry_hooks(module: torch.nn.Module) -> list:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return []
    for name in _UNSUPPORTED:
        if registry.get_hook(name) is not None:
            raise ValueError("transformer: group offloading with use_stream=True at leaf level learns the layer "
                             "order from a single forward and is not supported by the EDiT runtime; use "
                             "offload_type='block_level' or use_stream=False")
    return [registry.get_hook(name) for name in registry._hook_order if name in _DIFFUSERS_OFFLOAD_HOOKS]


@contextlib.contextmanager
def forward_hooks(module: torch.nn.Module) -> Iterator[None]:
    """Run the offloading hooks attached to `module` itself as if one `forward` spanned the region."""
    accelerate_hook = getattr(module, "_hf_hook", None)
    hooks = _registry_hooks(module)
    if accelerate_hook is not None:
        accelerate_hook.pre_forward(module)
    for hook in hooks:
        hook.pre_forward(module)
    try:
        yield
    finally:
        for hook in reversed(hooks):
            hook.post_forward(module, None)
        if accelerate_hook is not None:
            accelerate_hook.post_forward(module, None)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where `module` computes: its offloader's execution/onload device, else where its weights are."""
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if device is None:
        group = getattr(next(iter(_registry_hooks(module)), None), "group", None)
        device = getattr(group, "onload_device", None)
    if device is None:
        return next(module.parameters()).device
    return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)


class ExpertHooks:
    """The offloading hooks of one expert at a time, for a run whose steps switch experts (Wan2.2):
    `enter(model_id)` leaves the hooks of the expert in use and enters the new one's, as
    `WanPipeline`'s forwards would (the model-offload chain onloads one expert and parks the other);
    entering both for the whole run would park the first while it still runs. `close()` leaves the
    last. A context manager."""

    def __init__(self, experts: dict[str, torch.nn.Module]):
        self.experts = experts
        self.current: str | None = None
        self._stack: contextlib.ExitStack | None = None

    def enter(self, model_id: str) -> None:
        if model_id == self.current:
            return
        self.close()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(forward_hooks(self.experts[model_id]))
        self.current = model_id

    def close(self) -> None:
        stack, self._stack, self.current = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> ExpertHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
