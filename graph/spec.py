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


#: How a run conditions the latent video, besides the text (`RunSpec.condition`): "concat" (image
#: to video: the encoded condition video joins the latents' channels), "first_frame" (Wan2.2
#: TI2V: the first latent frame is the encoded image, and its patches' timestep is 0).
CONDITIONS = (None, "concat", "first_frame")


def _check_condition(inst: RunSpec, attribute: attrs.Attribute, value: object) -> None:
    if value not in CONDITIONS:
        raise ValueError(f"condition: expected None, 'concat' or 'first_frame', got {value!r}")


def _check_bool(inst: RunSpec, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name}: expected True or False, got {type(value).__name__} {value!r}")


def _check_blocks(inst: RunSpec, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"num_blocks: expected an int >= 1, got {value!r}")


@attrs.frozen
class RunSpec:
    """Shape of a run: steps and their timesteps, CFG branches, blocks, granularity, generation, model id,
    latent shape, and which model runs each step.

    `branches` is ("cond", "uncond") with classifier-free guidance and ("cond",) without.
    `step_models` (one id per step) names the model of each step when a run uses several (the
    caller fills it from its adapters); empty, every step runs `model`. `step_guidance` (one scale
    per step) likewise, when the guidance differs by step; empty, every step guides with
    `guidance_scale`.

    `condition` (see `CONDITIONS`) and `image_embeds` (Wan2.1 I2V: a CLIP embedding of the
    image(s) joins the text in cross-attention) name the run inputs beyond latents and text that
    each embed reads: `conditions`.
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
    step_models: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    step_guidance: tuple[float, ...] = attrs.field(default=(), converter=lambda gs: tuple(float(g) for g in gs))
    condition: str | None = attrs.field(default=None, validator=_check_condition)
    image_embeds: bool = attrs.field(default=False, validator=_check_bool)

    def __attrs_post_init__(self) -> None:
        if len(self.timesteps) != self.num_steps:
            raise ValueError(f"timesteps: expected {self.num_steps} values (num_steps), got {len(self.timesteps)}")
        if self.step_models and (len(self.step_models) != self.num_steps
                                 or not all(isinstance(m, str) and m for m in self.step_models)):
            raise ValueError(f"step_models: expected () or one model id per step ({self.num_steps}), "
                             f"got {self.step_models!r}")
        if self.step_guidance and len(self.step_guidance) != self.num_steps:
            raise ValueError(f"step_guidance: expected () or one guidance scale per step ({self.num_steps}), "
                             f"got {len(self.step_guidance)} values")
        check_granularity(self.granularity, self.num_blocks)

    def call_fields(self) -> RunSpec:
        """The spec with only what the call decides: all but the granularity, which `regroup` sets."""
        return attrs.evolve(self, granularity="stack")

    def model_at(self, step: int) -> str:
        """The id of the model that runs `step` (`step_models`, e.g. Wan2.2's two experts; else `model`)."""
        return self.step_models[step] if self.step_models else self.model

    def guidance_at(self, step: int) -> float:
        """The guidance scale of `step` (`step_guidance`: Wan2.2's `guidance_scale_2` on the second
        expert's steps; else `guidance_scale`)."""
        return self.step_guidance[step] if self.step_guidance else self.guidance_scale

    @property
    def models(self) -> tuple[str, ...]:
        """The ids of the models the run uses, in order of first use."""
        return tuple(dict.fromkeys(self.step_models)) if self.step_models else (self.model,)

    @property
    def conditions(self) -> tuple[str, ...]:
        """The conditioning run inputs each embed reads, by port name: `condition` (the encoded
        condition video), `mask` (with "first_frame": 0 on the first latent frame, 1 elsewhere),
        `image` (the CLIP image embedding)."""
        names = ("condition",) if self.condition else ()
        names += ("mask",) if self.condition == "first_frame" else ()
        return names + (("image",) if self.image_embeds else ())

    @property
    def run_inputs(self) -> tuple[str, ...]:
        """The names of the run's `Input`s: latents, each branch's text, then the conditions."""
        return ("latents", *(f"text.{b}" for b in self.branches), *self.conditions)

    @property
    def cfg(self) -> bool:
        return "uncond" in self.branches

    def units(self) -> tuple[tuple[int, int], ...]:
        return unit_ranges(self.granularity, self.num_blocks)
