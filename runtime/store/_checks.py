"""Argument checks shared by the stores: user mistakes become TypeError/ValueError naming the argument."""

from __future__ import annotations

import numbers
from typing import Any

import torch


def check_key(key: Any) -> tuple:
    """A key must be a hashable tuple, e.g. ``(generation, step, branch, unit)``."""
    if not isinstance(key, tuple):
        raise TypeError("key must be a hashable tuple such as (generation, step, branch, unit); "
                        f"got {type(key).__name__}")
    try:
        hash(key)
    except TypeError as exc:
        raise TypeError(f"key must be a hashable tuple; {key!r} is not hashable ({exc})") from None
    return key


def check_tensor(tensor: Any) -> torch.Tensor:
    """Stores hold dense (strided) tensors with real storage."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.layout is not torch.strided:
        raise TypeError(f"tensor must have layout torch.strided; got {tensor.layout}")
    if tensor.device.type == "meta":
        raise TypeError("tensor must have real storage (cpu or cuda); got a meta tensor")
    return tensor


def check_budget(budget: Any, name: str = "budget") -> int | None:
    """A byte budget is a positive int, or None for unlimited."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise TypeError(f"{name} must be a positive int (bytes) or None (unlimited); got {type(budget).__name__}")
    if budget <= 0:
        raise ValueError(f"{name} must be a positive int (bytes) or None (unlimited); got {budget}")
    return int(budget)


def check_bool(value: Any, name: str) -> bool:
    """Flags are real bools, so that a stray string or int is caught early."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value
