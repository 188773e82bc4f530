"""`RunSpec`: everything the lowering needs to know about one denoising run."""

from __future__ import annotations

import attrs

from edit.graph.nodes import BRANCHES, DEFAULT_MODEL

GRANULARITIES = ("stack", "per_block")


def check_granularity(granularity: object, num_blocks: int) -> str | int:
    """Validate a granularity: "stack", "per_block", or an int k in [1, num_blocks]."""
    if isinstance(granularity, bool) or not isinstance(granularity, (str, int)):
        raise TypeError(f"granularity: expected 'stack', 'per_block' or an int, got {type(granularity).__name__}")
    if isinstance(granularity, str):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected 'stack', 'per_block' or an int in [1, {num_blocks}], "
                             f"got {granularity!r}")
    elif not 1 <= granularity <= num_blocks:
        raise ValueError(f"granularity: an int group size must be in [1, {num_blocks}] (the block count), "
                         f"got {granularity}")
    return granularity


def unit_ranges(granularity: str | int, num_blocks: int, first: int = 0) -> tuple[tuple[int, int], ...]:
    """Block ranges [start, stop) of the units covering blocks first..num_blocks-1."""
    check_granularity(granularity, num_blocks)
    if granularity == "stack":
        size = num_blocks - first
    elif granularity == "per_block":
        size = 1
    else:
        size = int(granularity)
    return tuple((s, min(s + size, num_blocks)) for s in range(first, num_blocks, max(size, 1)))


def _check_steps(inst: RunSpec, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_steps: expected an int >= 1, got {value!r}")


def _check_branches(inst: RunSpec, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if value not in (("cond",), ("cond", "uncond")):
        raise ValueError(f"branches: expected ('cond',) or ('cond', 'uncond'), got {value!r}")


def _check_blocks(inst: RunSpec, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_blocks: expected an int >= 1, got {value!r}")


@attrs.frozen
class RunSpec:
    """Shape of a run: steps and their timesteps, CFG branches, blocks, granularity, generation, model id.

    `branches` is ("cond", "uncond") with classifier-free guidance and ("cond",) without.
    """

    num_steps: int = attrs.field(validator=_check_steps)
    timesteps: tuple[float, ...] = attrs.field(converter=lambda ts: tuple(float(t) for t in ts))
    num_blocks: int = attrs.field(validator=_check_blocks)
    branches: tuple[str, ...] = attrs.field(default=BRANCHES, converter=tuple, validator=_check_branches)
    guidance_scale: float = attrs.field(default=5.0, converter=float)
    granularity: str | int = "stack"
    generation: int = 0
    model: str = DEFAULT_MODEL
    latent_shape: tuple[int, ...] | None = attrs.field(default=None, converter=lambda s: None if s is None
                                                       else tuple(int(d) for d in s))

    def __attrs_post_init__(self) -> None:
        if len(self.timesteps) != self.num_steps:
            raise ValueError(f"timesteps: expected {self.num_steps} values (num_steps), got {len(self.timesteps)}")
        check_granularity(self.granularity, self.num_blocks)

    @property
    def cfg(self) -> bool:
        return "uncond" in self.branches

    def units(self) -> tuple[tuple[int, int], ...]:
        return unit_ranges(self.granularity, self.num_blocks)
