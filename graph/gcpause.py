"""`paused_gc`: no cyclic garbage collection while a pass, a verify or a plan load runs."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Passes make many small dicts and records but no garbage cycles; a cyclic collection in the
    middle of one walks the whole heap (a model's worth of objects), so it waits until the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
