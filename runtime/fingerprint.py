"""Digests a plan's fingerprint is made of: a model's config and weights, a scheduler's config."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def weights_version(model: torch.nn.Module) -> tuple[int, int]:
    """(id of the model, the sum of its parameters' version counters): cheap, and it changes when
    the weights are replaced in place (`load_state_dict`, `copy_`) or the model is another object
    (an offloader moving them between devices changes neither, nor their values)."""
    return id(model), sum(p._version for p in model.parameters())


def weights_digest(model: torch.nn.Module, samples: int = 256) -> str:
    """A content digest of the weights that survives processes (plan files): every tensor's name,
    shape and dtype, and `samples` evenly strided values of it. Cheap (a few hundred values per
    tensor, not the gigabytes), and any other checkpoint or fine-tune changes it. Weights an offloader
    keeps on the meta device outside a forward count by name, shape and dtype only."""
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if tensor.device.type == "meta":  # parked by an offloader outside a forward: no values to read
                continue
            flat = tensor.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float64)
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:16]


def config_digest(component: Any) -> str:
    """A digest of a diffusers component's config (private `_` keys left out)."""
    config = dict(getattr(component, "config", {}) or {})
    text = json.dumps({k: v for k, v in sorted(config.items()) if not k.startswith("_")}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class DigestCache:
    """The weights digest of a model, recomputed only when its `weights_version` changes."""

    def __init__(self) -> None:
        self._entry: tuple[Any, str] | None = None

    def __call__(self, model: torch.nn.Module, version: tuple | None = None) -> str:
        version = weights_version(model) if version is None else version
        if self._entry is None or self._entry[0] != version:
            self._entry = (version, weights_digest(model))
        return self._entry[1]
