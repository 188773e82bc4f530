"""`Namespace`: one cache controller's view of a store that several may share.

Every key the controller uses is stored as `(owner,) + key`, so two pipelines sharing one store
instance (a GPUStore, a DiskStore, a TieredStore) never read each other's residuals, and clearing
one's cache drops only its own entries. Statistics, budgets and tiers are the shared store's.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch

_OWNERS = itertools.count()


def new_owner() -> str:
    """A process-unique owner id (the pid keeps two processes on one disk folder apart too)."""
    return f"cache{os.getpid()}.{next(_OWNERS)}"


class Namespace:
    """`store` as seen by one `owner`: put/get/prefetch/drop/contains/keys/clear on its keys only."""

    def __init__(self, store: Any, owner: str | None = None):
        self.inner = store
        self.owner = new_owner() if owner is None else owner

    def _key(self, key: tuple) -> tuple:
        if not isinstance(key, tuple):
            raise TypeError(f"key: expected a tuple, got {type(key).__name__}")
        return (self.owner,) + key

    def put(self, key: tuple, tensor: torch.Tensor) -> Any:
        return self.inner.put(self._key(key), tensor)

    def get(self, key: tuple) -> torch.Tensor | None:
        return self.inner.get(self._key(key))

    def prefetch(self, key: tuple) -> None:
        prefetch = getattr(self.inner, "prefetch", None)
        if callable(prefetch):  # a store with only put/get has nothing to stage
            prefetch(self._key(key))

    def drop(self, key: tuple) -> None:
        drop = getattr(self.inner, "drop", None)
        if callable(drop):
            drop(self._key(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self._key(key) in self.inner

    def keys(self) -> list[tuple]:
        """This owner's keys, without the owner (empty for a store that cannot list its keys)."""
        listed = getattr(self.inner, "keys", None)
        if not callable(listed):
            return []
        return [k[1:] for k in listed() if isinstance(k, tuple) and k[:1] == (self.owner,)]

    def clear(self) -> None:
        """Drop this owner's entries (the other owners' stay)."""
        for key in self.keys():
            self.drop(key)

    def __getattr__(self, name: str) -> Any:  # stats, nbytes, budgets, stores, close: the shared store's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"Namespace({self.owner!r}, {self.inner!r})"
