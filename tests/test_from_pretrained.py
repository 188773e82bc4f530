"""`EditWanPipeline.from_pretrained` loads a saved pipeline for real (no hub access)."""

from __future__ import annotations

import torch
from conftest import components, generate
from diffusers import WanPipeline

from edit import EditWanPipeline


def test_save_and_load_back_gives_identical_output(tmp_path):
    comps = components()
    original = EditWanPipeline(**comps)
    original.save_pretrained(tmp_path / "edit")
    WanPipeline(**comps).save_pretrained(tmp_path / "diffusers")
    for folder in ("edit", "diffusers"):
        loaded = EditWanPipeline.from_pretrained(tmp_path / folder, dtype=torch.float32, device="cpu")
        assert type(loaded) is EditWanPipeline
        assert type(loaded.tokenizer).__name__ == "ByT5Tokenizer"
        assert torch.equal(generate(loaded), generate(original)), folder
