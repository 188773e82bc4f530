"""Fit TeaCache's rescaling polynomial for a model: `calibrate_teacache`.

TeaCache skips while the accumulated *estimated* change of the model's output stays under a
threshold; the estimate is `poly(relative_l1(signal, previous signal))`, a polynomial fitted per
model. The published coefficients only hold for the checkpoints they were fitted on; this fits new
ones from uncached runs of `pipe`: per CFG branch and step, x = relative L1 change of the signal
(`e0` with `use_ret_steps=True`, `e` otherwise) and y = relative L1 change of the residual the cache
would reuse (stack output − stack input), then `numpy.polyfit(x, y, degree)`.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch

from edit.passes.policy import CacheContext, CachePolicy, relative_l1


@attrs.frozen
class TeaCacheCalibration:
    """The fitted polynomial (highest degree first, as `teacache(coefficients=...)` takes it) and the
    samples it was fitted on, of `model`. A pipeline of two experts (Wan2.2) gets one fit per
    expert in `models` (by model id; the first expert's is also this record's own)."""

    coefficients: tuple[float, ...]
    use_ret_steps: bool
    signal_changes: tuple[float, ...]
    residual_changes: tuple[float, ...]
    model: str = "transformer"
    models: dict = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def mean_abs_error(self) -> float:
        """Mean |poly(x) - y| over the samples."""
        x, y = np.asarray(self.signal_changes), np.asarray(self.residual_changes)
        return float(np.mean(np.abs(np.poly1d(self.coefficients)(x) - y)))

    def policy_kwargs(self) -> dict[str, Any]:
        """What to pass to `enable_cache("teacache", rel_l1_thresh=..., **kwargs)`: with two experts,
        each one's own coefficients (`per_model` for the second)."""
        out: dict[str, Any] = {"coefficients": self.coefficients, "use_ret_steps": self.use_ret_steps}
        others = {m: {"coefficients": fit.coefficients} for m, fit in self.models.items() if m != self.model}
        if others:
            out["per_model"] = others
        return out


class _Record(CachePolicy):
    """Computes everything (the run stays bit-identical to no cache); the hooks take the samples."""

    def should_compute(self, ctx: CacheContext) -> bool:
        return True


def calibrate_teacache(pipe, prompts: str | list[str], *, num_inference_steps: int = 50, use_ret_steps: bool = True,
                       degree: int = 4, seed: int = 0, **call_kwargs: Any) -> TeaCacheCalibration:
    """Run `pipe` uncached on each prompt (seed, seed+1, ...) and fit the TeaCache polynomial.

    `call_kwargs` go to the pipeline call (height, width, num_frames, guidance_scale, ...). The
    pipeline's cache settings are restored afterwards.
    """
    from edit.checks import check_int
    from edit.pipeline import EditWanPipeline

    if not isinstance(pipe, EditWanPipeline):
        raise TypeError(f"pipe: expected an EditWanPipeline, got {type(pipe).__name__}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts: expected a prompt or a non-empty list of prompts")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree: expected an int >= 1, got {degree!r}")
    check_int(num_inference_steps, "num_inference_steps", low=2, what=" (samples are step-to-step changes)")
    if not isinstance(use_ret_steps, bool):
        raise TypeError(f"use_ret_steps: expected a bool, got {type(use_ret_steps).__name__}")
    for reserved in ("output_type", "generator", "num_inference_steps", "prompt"):
        if reserved in call_kwargs:
            raise ValueError(f"{reserved}: set by calibrate_teacache; not allowed in call_kwargs")

    # samples by model: a change is measured between two steps of one expert, never across a switch
    samples: dict[str, tuple[list[float], list[float]]] = {}
    previous: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # branch -> (signal, stack input)

    def before_unit(event) -> None:
        inputs[event.branch] = (event.ctx.e0 if use_ret_steps else event.ctx.e, event.hidden)

    def after_unit(event) -> None:
        signal, hidden = inputs.pop(event.branch)
        residual = event.output - hidden
        key = (event.ctx.model, event.branch)
        if key in previous:
            prev_signal, prev_residual = previous[key]
            xs, ys = samples.setdefault(event.ctx.model, ([], []))
            xs.append(relative_l1(signal, prev_signal))
            ys.append(relative_l1(residual, prev_residual))
        previous[key] = (signal, residual)

    with pipe.cache_enabled(_Record(), fold=False, num_inference_steps=num_inference_steps) as cache:
        cache.add_hook("before_unit", before_unit)
        cache.add_hook("after_unit", after_unit)
        for i, prompt in enumerate(prompts):
            previous.clear()
            pipe(prompt, num_inference_steps=num_inference_steps, output_type="latent",
                 generator=torch.Generator("cpu").manual_seed(seed + i), **call_kwargs)
    fits = {}
    for model in pipe.adapters:
        xs, ys = samples.get(model, ([], []))
        if len(xs) < degree + 1:
            what = f" of {model}" if len(pipe.adapters) > 1 else ""
            raise ValueError(f"degree: {degree} needs at least {degree + 1} samples{what}, the runs gave {len(xs)}; "
                             "use more steps or prompts")
        coefficients = tuple(float(c) for c in np.polyfit(np.asarray(xs), np.asarray(ys), degree))
        fits[model] = TeaCacheCalibration(coefficients, use_ret_steps, tuple(xs), tuple(ys), model)
    first = fits[pipe.adapter.model_id]
    return attrs.evolve(first, models=fits) if len(fits) > 1 else first


@attrs.frozen
class MagCacheCalibration:
    """MagCache's per-step magnitude ratios of `model` (`ratios[t]`: mean over tokens of
    |residual_t| / |residual_{t-1}|, 1.0 at step 0), averaged over the calibration prompts and the
    CFG branches; `per_run` keeps each (prompt, branch) run's own list."""

    ratios: tuple[float, ...]
    per_run: tuple[tuple[float, ...], ...] = attrs.field(eq=False, repr=False)
    model: str = "transformer"

    def policy_kwargs(self, num_inference_steps: int | None = None) -> dict[str, Any]:
        """What to pass to `enable_cache("magcache", threshold=..., **kwargs)`; with
        `num_inference_steps`, the ratios resampled to it by nearest index (as MagCache does)."""
        from edit.passes.magcache import nearest_interp

        ratios = self.ratios if num_inference_steps is None else nearest_interp(self.ratios, num_inference_steps)
        return {"mag_ratios": tuple(float(r) for r in ratios)}


def calibrate_magcache(pipe, prompts: str | list[str], *, num_inference_steps: int = 50, seed: int = 0,
                       **call_kwargs: Any) -> MagCacheCalibration:
    """Run `pipe` uncached on each prompt (seed, seed+1, ...) and measure MagCache's magnitude
    ratios, as diffusers' `MagCacheConfig(calibrate=True)` does for one run: per step, the mean over
    tokens of the norm of the stack's residual over the previous step's (+1e-8), 1.0 at step 0;
    averaged over prompts and CFG branches. One model only (a Wan2.2 pipeline: ValueError)."""
    from edit.checks import check_int
    from edit.pipeline import EditWanMixin

    if not isinstance(pipe, EditWanMixin):
        raise TypeError(f"pipe: expected an EditWanPipeline, got {type(pipe).__name__}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts: expected a prompt or a non-empty list of prompts")
    if len(pipe.adapters) > 1:
        raise ValueError("pipe: calibrate_magcache measures one model; this pipeline runs two experts")
    check_int(num_inference_steps, "num_inference_steps", low=2, what=" (ratios are step-to-step)")
    for reserved in ("output_type", "generator", "num_inference_steps", "prompt"):
        if reserved in call_kwargs:
            raise ValueError(f"{reserved}: set by calibrate_magcache; not allowed in call_kwargs")

    runs: dict[tuple[int, str], list[float]] = {}
    previous: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    prompt_index = [0]

    def before_unit(event) -> None:
        inputs[event.branch] = event.hidden

    def after_unit(event) -> None:
        residual = event.output - inputs.pop(event.branch)
        prev = previous.get(event.branch)
        if prev is None:
            ratio = 1.0
        else:
            ratio = (torch.linalg.norm(residual.float(), dim=-1)
                     / (torch.linalg.norm(prev.float(), dim=-1) + 1e-8)).mean().item()
        runs.setdefault((prompt_index[0], event.branch), []).append(ratio)
        previous[event.branch] = residual

    with pipe.cache_enabled(_Record(), fold=False, num_inference_steps=num_inference_steps) as cache:
        cache.add_hook("before_unit", before_unit)
        cache.add_hook("after_unit", after_unit)
        for i, prompt in enumerate(prompts):
            previous.clear()
            prompt_index[0] = i
            pipe(prompt, num_inference_steps=num_inference_steps, output_type="latent",
                 generator=torch.Generator("cpu").manual_seed(seed + i), **call_kwargs)
    per_run = tuple(tuple(r) for _, r in sorted(runs.items()))
    ratios = tuple(float(np.mean(col)) for col in zip(*per_run))
    return MagCacheCalibration(ratios, per_run, pipe.adapter.model_id)
