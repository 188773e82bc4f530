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
