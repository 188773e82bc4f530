"""The trained toy Wan shipped in edit/toy/weights: it loads offline, generates deterministically,
is diffusers' WanPipeline bit for bit with no cache, and draws what its captions say."""

from __future__ import annotations

import pytest
import torch

from edit.toy import check
from edit.toy.model import WEIGHTS

pytestmark = pytest.mark.skipif(not (WEIGHTS / "model_index.json").is_file(),
                                reason="no trained toy weights in edit/toy/weights (python -m edit.toy.train)")

SIZE = dict(num_frames=17, height=64, width=64)


@pytest.fixture(scope="module")
def toy():
    import edit

    pipe = edit.toy_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_toy_loads_offline_and_generates_deterministically(toy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kwargs = dict(num_inference_steps=4, output_type="latent", **SIZE)
    a = toy("a red circle moving left on a dark background", generator=torch.Generator().manual_seed(3), **kwargs)
    b = toy("a red circle moving left on a dark background", generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(a.frames, b.frames)


def test_the_uncached_toy_is_diffusers_wan_pipeline_bit_for_bit(toy):
    from diffusers import WanPipeline

    kwargs = dict(num_inference_steps=4, output_type="np", **SIZE)
    prompt = "a big blue square moving up on a gradient background"
    ours = toy(prompt, generator=torch.Generator().manual_seed(1), **kwargs).frames
    ref = WanPipeline(**toy.components)
    ref.set_progress_bar_config(disable=True)
    theirs = ref(prompt, generator=torch.Generator().manual_seed(1), **kwargs).frames
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(theirs))


def test_generations_show_the_captioned_colour_and_direction(toy):
    clips = check.captions(held_out=False, count=20, seed=1234)  # seeds training never drew
    score, hits = check.score(toy, clips, seed=99)
    missed = [c.caption for c, h in zip(clips, hits) if not h]
    assert score >= 0.9, missed


def test_held_out_colour_shape_pairs_are_read_back_too(toy):
    # composition the model never saw (green triangles, yellow squares): reported by
    # tests/bench_toy.py; here only a floor that a model ignoring its caption would miss
    clips = check.captions(held_out=True, count=10, seed=4321)
    score, _ = check.score(toy, clips, seed=98)
    assert score >= 0.5


def test_the_toy_is_the_cli_s_default_model(tmp_path, monkeypatch, capsys):
    from edit.cli import main

    monkeypatch.delenv("EDIT_MODEL", raising=False)
    out = tmp_path / "circle.gif"
    assert main(["generate", "a big red circle moving left on a dark background", "--steps", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "generated 17 frames of 64x64" in printed.out + printed.err and out.stat().st_size > 0


def test_teacache_on_the_toy_uses_the_toy_s_own_coefficients(toy, recwarn):
    from edit.cache import TEACACHE_COEFFICIENTS
    from edit.checks import variant_for

    assert variant_for(toy.transformer) == "toy"
    toy.enable_cache("teacache")
    try:
        policy = toy.cache.policy
        assert policy.wan_variant == "toy"
        assert tuple(policy.coefficients) == TEACACHE_COEFFICIENTS["toy"][policy.use_ret_steps]
    finally:
        toy.disable_cache()
    assert not [w for w in recwarn if "teacache" in str(w.message)]


def test_the_examples_run_on_the_toy(tmp_path, capsys, monkeypatch):
    from test_examples import run_example

    monkeypatch.delenv("EDIT_MODEL", raising=False)  # their default: the toy, as the weights are here
    out = run_example("example.py", ["--out", str(tmp_path / "circle.gif"), "--steps", "4"], capsys)
    assert "17 frames of 64x64" in out
    out = run_example("wan_t2v_teacache.py", ["--steps", "12"], capsys)
    assert "TeaCache" in out and "PSNR" in out
