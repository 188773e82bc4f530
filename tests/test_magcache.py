"""MagCache as a built-in policy: decisions and output `torch.equal` to diffusers' `MagCacheConfig`
hook on `WanPipeline` with the same ratios and parameters; folded equals run time; calibration
equals diffusers' own calibration mode."""

from __future__ import annotations

import ast
import copy

import pytest
import torch
from conftest import SIZE, components, generate
from diffusers import MagCacheConfig, WanPipeline

from edit import EditWanPipeline
from edit.cache import calibrate_magcache, make_policy
from edit.passes import Pipeline

RATIOS = [1.0, 0.99, 0.985, 0.995, 1.01, 0.96, 0.93, 1.02, 0.97, 0.9]


def diffusers_run(config: MagCacheConfig, steps: int) -> tuple[torch.Tensor, dict]:
    """WanPipeline with the MagCache hook: latents and the per-branch trace (C where the last
    block's feed-forward ran)."""
    comps = components()
    comps["transformer"] = copy.deepcopy(comps["transformer"])
    pipe = WanPipeline(**comps)
    pipe.transformer.enable_cache(config)
    forwards: list[bool] = []
    pipe.transformer.register_forward_pre_hook(lambda *a: forwards.append(False))
    pipe.transformer.blocks[-1].ffn.register_forward_hook(lambda *a: forwards.__setitem__(-1, True))
    out = generate(pipe, num_inference_steps=steps)
    trace = {(b, 0): "".join("C" if c else "S" for c in forwards[i::2]) for i, b in enumerate(("cond", "uncond"))}
    return out, trace


CASES = {
    "K2": (dict(threshold=0.06, max_skip_steps=2, retention_ratio=0.2), RATIOS, 10),
    "K4-loose": (dict(threshold=0.3, max_skip_steps=4, retention_ratio=0.1), RATIOS, 10),
    "resampled": (dict(threshold=0.12, max_skip_steps=3, retention_ratio=0.2), RATIOS, 7),  # 10 ratios, 7 steps
    # retention int(0.25 * 10 + 0.5) = 3, not 2: step 2 computes
    "retention-rounds": (dict(threshold=0.3, max_skip_steps=4, retention_ratio=0.25), [1.0] * 10, 10),
    # the error after two ratios of 0.97 is 0.08909994 in float32 (diffusers' tensors), 0.08909992 in
    # float64: a threshold between the two computes at step 3 only when accumulated as diffusers does
    "float32": (dict(threshold=0.08909992976188619, max_skip_steps=3, retention_ratio=0.25), [1.0, 1.0] + [0.97] * 6,
                8),
    # and 0.0891 with the ratios unrounded (0.97 as a float64): a threshold between skips in float32 only
    "float32-ratios": (dict(threshold=0.08909997, max_skip_steps=3, retention_ratio=0.25), [1.0, 1.0] + [0.97] * 6,
                       8),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "run-time"])
def test_magcache_equals_diffusers_hook(case, fold):
    kwargs, ratios, steps = CASES[case]
    ref, ref_trace = diffusers_run(MagCacheConfig(mag_ratios=ratios, num_inference_steps=steps, **kwargs), steps)
    assert "S" in ref_trace[("cond", 0)] and "C" in ref_trace[("cond", 0)][1:], ref_trace  # a mix to match
    pipe = EditWanPipeline(**components())
    pipe.enable_cache("magcache", mag_ratios=ratios, fold=fold, **kwargs)
    plan = pipe.compile(steps, 5.0, **SIZE)
    assert ("?" in plan.summary()) != fold  # its decision reads only the ratios: it folds
    out = generate(pipe, num_inference_steps=steps)
    assert pipe.cache.stats.trace == ref_trace
    assert torch.equal(out, ref)


def test_the_policy_prints_with_its_ratios_and_parses_back():
    policy = make_policy("magcache", mag_ratios=RATIOS, threshold=0.1)
    text = policy.to_text()
    assert text.startswith("magcache(mag_ratios=(1.0, 0.9900000095367432,") and "max_skip_steps=3" in text
    again = Pipeline.parse(f"apply_policy(policy={text})").passes[0].policy  # as a saved plan reads it
    assert again.to_text() == text and again.mag_ratios == policy.mag_ratios


def test_calibration_equals_diffusers_calibration_mode(capsys):
    steps = 6
    diffusers_run(MagCacheConfig(calibrate=True, num_inference_steps=steps), steps)
    printed = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("[1")]
    assert len(printed) == 2  # one list per CFG context: cond, then uncond
    pipe = EditWanPipeline(**components())
    cal = calibrate_magcache(pipe, ["a red fox running through snow"], num_inference_steps=steps, seed=7, **SIZE)
    assert cal.per_run == (tuple(printed[0]), tuple(printed[1]))
    assert cal.ratios == tuple((a + b) / 2 for a, b in zip(*printed)) and cal.ratios[0] == 1.0
    assert pipe.cache is None  # the pipeline's cache settings are back as they were
    assert cal.policy_kwargs(3)["mag_ratios"] == (cal.ratios[0], cal.ratios[2], cal.ratios[5])


@pytest.mark.parametrize("kwargs, message", [
    (dict(mag_ratios=[]), "mag_ratios: expected finite numbers > 0"),
    (dict(mag_ratios=[1.0, -0.5]), "mag_ratios: expected finite numbers > 0"),
    (dict(mag_ratios="1.0"), "mag_ratios: expected a sequence of numbers"),
    (dict(mag_ratios=RATIOS, threshold=-1), "threshold: expected a finite number >= 0"),
    (dict(mag_ratios=RATIOS, max_skip_steps=1.5), "max_skip_steps: expected an int >= 0"),
    (dict(mag_ratios=RATIOS, retention_ratio=2), "retention_ratio: expected a number in \\[0, 1\\]"),
])
def test_bad_arguments_are_refused_before_any_work(kwargs, message):
    pipe = EditWanPipeline(**components())
    with pytest.raises((ValueError, TypeError), match=message):
        pipe.enable_cache("magcache", **kwargs)
    assert pipe.cache is None
