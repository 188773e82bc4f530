"""calibrate_teacache: samples equal an independent loop, the fit is numpy's, the pipeline is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL, components, generate
from test_cache import STEPS, _embed, _head, reference_loop

from edit import EditWanPipeline
from edit.cache import calibrate_teacache

PROMPT = "a red fox running through snow"  # the reference loop's prompt and seed
SIZE = {k: SMALL[k] for k in ("num_frames", "height", "width")}


def reference_samples(use_ret_steps: bool) -> tuple[list[float], list[float]]:
    """(signal change, residual change) per step after the first, cond then uncond, straight over the modules."""
    xs, ys = [], []

    def rel(cur, prev):
        return ((cur.float() - prev.float()).abs().mean() / prev.float().abs().mean()).item()

    def forward(st, m, i, n, x, t, text):
        h, temb, e0, enc, rotary = _embed(m, x, t, text)
        out = h
        for block in m.blocks:
            out = block(out, enc, e0, rotary)
        signal, residual = (e0 if use_ret_steps else temb), out - h
        if "prev" in st:
            xs.append(rel(signal, st["prev"][0]))
            ys.append(rel(residual, st["prev"][1]))
        st["prev"] = (signal, residual)
        return _head(m, out, temb, x.shape), True

    reference_loop(components(), forward)
    return xs, ys


@pytest.mark.parametrize("use_ret_steps", [True, False])
def test_samples_and_fit_match_an_independent_loop(use_ret_steps):
    pipe = EditWanPipeline(**components())
    pipe.set_progress_bar_config(disable=True)
    fit = calibrate_teacache(pipe, PROMPT, num_inference_steps=STEPS, use_ret_steps=use_ret_steps, seed=7, **SIZE)
    xs, ys = reference_samples(use_ret_steps)
    assert len(fit.signal_changes) == len(xs) == 2 * (STEPS - 1)
    # Per step cond then uncond, in both.
    assert fit.signal_changes == pytest.approx(xs, rel=1e-5)
    assert fit.residual_changes == pytest.approx(ys, rel=1e-5)
    assert fit.coefficients == pytest.approx(tuple(np.polyfit(fit.signal_changes, fit.residual_changes, 4)))
    assert fit.use_ret_steps is use_ret_steps and len(fit.coefficients) == 5
    # The fit explains the residual change better than its mean does.
    spread = float(np.mean(np.abs(np.asarray(ys) - np.mean(ys))))
    assert fit.mean_abs_error < spread


def test_calibrated_teacache_skips_and_pipeline_state_is_restored():
    pipe = EditWanPipeline(**components())
    pipe.set_progress_bar_config(disable=True)
    before = generate(pipe, num_inference_steps=STEPS)
    fit = calibrate_teacache(pipe, ["a lighthouse in a storm", "a cat at a piano"], num_inference_steps=STEPS, **SIZE)
    assert pipe.cache is None
    assert torch.equal(generate(pipe, num_inference_steps=STEPS), before)  # the plain plan again

    pipe.enable_cache("teacache", rel_l1_thresh=0.1, **fit.policy_kwargs())
    cached = generate(pipe, num_inference_steps=STEPS)
    trace = pipe.cache.stats.trace
    assert "S" in trace[("cond", 0)] and trace[("cond", 0)].startswith("CCCCC")  # skips after the forced window
    assert not torch.equal(cached, before)
    cache = pipe.cache
    calibrate_teacache(pipe, PROMPT, num_inference_steps=STEPS, **SIZE)
    assert pipe.cache is cache  # an enabled cache is kept too


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompts=[]), ValueError, "prompts"),
    (dict(prompts=[3]), ValueError, "prompts"),
    (dict(degree=0), ValueError, "degree"),
    (dict(degree=30), ValueError, "degree: 30 needs at least 31 samples"),
    (dict(num_inference_steps=1), ValueError, "num_inference_steps"),
    (dict(use_ret_steps="yes"), TypeError, "use_ret_steps"),
    (dict(output_type="np"), ValueError, "output_type"),
])
def test_bad_input(kwargs, error, match):
    pipe = EditWanPipeline(**components())
    pipe.set_progress_bar_config(disable=True)
    args = {"prompts": PROMPT, "num_inference_steps": 4, **SIZE, **kwargs}
    with pytest.raises(error, match=match):
        calibrate_teacache(pipe, args.pop("prompts"), **args)
    assert pipe.cache is None


def test_needs_an_edit_pipeline():
    with pytest.raises(TypeError, match="pipe"):
        calibrate_teacache(object(), PROMPT)
