"""Every API input a user can get wrong raises TypeError/ValueError naming the argument and what is
allowed, before any model work; diffusers' own behaviours (guidance <= 1 turns CFG off) are kept."""

from __future__ import annotations

import math

import pytest
import torch

import edit
from edit import EditWanPipeline
from edit.cache import GPUStore
from conftest import SMALL, components, generate

NAN, INF = float("nan"), float("inf")

ENABLE_CACHE = [
    ("teacache", dict(rel_l1_thresh=NAN), ValueError, "rel_l1_thresh: expected a finite number >= 0"),
    ("teacache", dict(rel_l1_thresh=INF), ValueError, "rel_l1_thresh: expected a finite number >= 0"),
    ("fbcache", dict(rel_l1_thresh=NAN), ValueError, "rel_l1_thresh: expected a finite number >= 0"),
    ("teacache", dict(coefficients=[NAN, 1]), ValueError, "coefficients: expected finite numbers"),
    ("teacache", dict(coefficients=[INF]), ValueError, "coefficients: expected finite numbers"),
    ("teacache", dict(coefficients="12"), TypeError, "coefficients: expected a sequence of numbers"),
    ("teacache", dict(coefficients=[1, "2"]), TypeError, "coefficients: expected a sequence of numbers"),
    ("teacache", dict(coefficients=3.0), TypeError, "coefficients: expected a sequence of numbers"),
    ("teacache", dict(fold="no"), TypeError, "fold: expected True or False"),
    ("teacache", dict(store=GPUStore), TypeError, r"store: expected a store instance such as GPUStore\(\)"),
]


@pytest.mark.parametrize("policy, kwargs, error, message", ENABLE_CACHE)
def test_enable_cache_refuses(policy, kwargs, error, message):
    pipe = EditWanPipeline(**components())
    with pytest.raises(error, match=message):
        pipe.enable_cache(policy, **kwargs)
    assert pipe.cache is None
    pipe.disable_cache()  # still works after a refusal


TINY = [
    (dict(num_layers=0), ValueError, "num_layers: expected an int >= 1, got 0"),
    (dict(num_layers=-1), ValueError, "num_layers: expected an int >= 1, got -1"),
    (dict(num_layers="4"), TypeError, "num_layers: expected an int >= 1, got str '4'"),
    (dict(patch_size=(1, 0, 0)), ValueError, r"patch_size: expected 3 ints >= 1 .*got \(1, 0, 0\)"),
    (dict(in_channels=0), ValueError, "in_channels: expected an int >= 1, got 0"),
    (dict(in_channels=8), ValueError, "in_channels: expected 16 .the VAE's latent channels"),
    (dict(num_attention_heads=0), ValueError, "num_attention_heads: expected an int >= 1, got 0"),
    (dict(attention_head_dim=-4), ValueError, "attention_head_dim: expected an int >= 1, got -4"),
    (dict(attention_head_dim=7), ValueError, "attention_head_dim: expected an even int"),
    (dict(seed=1.5), TypeError, r"seed: expected an int in \[0, 2\*\*64 - 1\], got float 1.5"),
    (dict(seed="x"), TypeError, r"seed: expected an int in \[0, 2\*\*64 - 1\], got str 'x'"),
    (dict(seed=2 ** 70), ValueError, r"seed: expected an int in \[0, 2\*\*64 - 1\]"),
    (dict(eps=NAN), ValueError, "eps: expected a finite number > 0"),
]


@pytest.mark.parametrize("kwargs, error, message", TINY)
def test_tiny_pipeline_refuses(monkeypatch, kwargs, error, message):
    import diffusers

    def built(*args, **kw):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(diffusers, "WanTransformer3DModel", built)
    with pytest.raises(error, match=message):
        edit.tiny_pipeline(**kwargs)


CALL = [
    (dict(guidance_scale=INF), ValueError, "guidance_scale: expected a finite number .*got inf"),
    (dict(guidance_scale=NAN), ValueError, "guidance_scale: expected a finite number .*got nan"),
    (dict(guidance_scale="5"), TypeError, "guidance_scale: expected a finite number"),
    (dict(num_frames=-3), ValueError, "num_frames: expected an int >= 1 .*got -3"),
    (dict(num_frames=0), ValueError, "num_frames: expected an int >= 1 .*got 0"),
    (dict(num_frames=9.0), TypeError, "num_frames: expected an int >= 1"),
    (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt: expected an int >= 1, got 0"),
    (dict(num_videos_per_prompt=None), TypeError, "num_videos_per_prompt: expected an int >= 1"),
    (dict(max_sequence_length=0), ValueError, "max_sequence_length: expected an int >= 1 .*got 0"),
    (dict(output_type="bogus"), ValueError, "output_type: expected one of 'np', 'pt', 'pil', 'latent', got 'bogus'"),
    (dict(height=528), ValueError, "height: 528 gives 33 patch rows, more than this model's RoPE table holds "
                                   r"\(32, rope_max_seq_len\); at most 512"),
    (dict(width=100000), ValueError, "width: 100000 gives 6250 patch columns"),
    (dict(num_frames=129), ValueError, "num_frames: 129 gives 33 patch frames, .*at most 125"),
]


@pytest.mark.parametrize("kwargs, error, message", CALL)
def test_call_refuses_before_any_model_work(kwargs, error, message):
    pipe = EditWanPipeline(**components())

    def model_work(*args, **kw):
        raise AssertionError("the prompt was encoded before the arguments were checked")

    pipe.encode_prompt = model_work
    with pytest.raises(error, match=message):
        pipe("a fox", **{**SMALL, "output_type": "latent", **kwargs})


def test_the_largest_sizes_the_rope_table_allows_are_accepted():
    from edit.limits import ModelLimits

    limits = ModelLimits.from_pipeline(EditWanPipeline(**components()))
    limits.check_size(125, 512, 512)  # the edges themselves: no error
    assert limits.tokens(125, 512, 512) == (32, 32, 32)


def test_guidance_at_or_below_one_turns_guidance_off_as_in_diffusers():
    pipe = EditWanPipeline(**components())
    off = generate(pipe, guidance_scale=1.0)
    assert torch.equal(generate(pipe, guidance_scale=-5.0), off)
    for scale in (-5.0, 0.0, 0.5, 1.0):
        assert pipe.run_spec(2, scale).branches == ("cond",)
    assert pipe.run_spec(2, 1.5).branches == ("cond", "uncond")


def test_disable_cache_works_even_when_the_store_cannot_clear(caplog):
    class Broken(GPUStore):
        def clear(self):
            raise RuntimeError("disk gone")

    pipe = EditWanPipeline(**components())
    pipe.enable_cache("fbcache", store=Broken(device="cpu"))
    pipe.disable_cache()
    assert pipe.cache is None
    assert math.isfinite(generate(pipe).float().sum().item())  # back on the plain plan
