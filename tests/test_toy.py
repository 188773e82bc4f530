"""The toy model's parts that need no trained weights: the procedural data set, reading a clip back
into words, and the training script (a smoke config, interrupted and resumed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from edit.toy import check, data


def test_the_same_seed_gives_the_same_clips_and_another_seed_others():
    a, b, c = data.batch(3, 4), data.batch(3, 4), data.batch(4, 4)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.video, y.video) for x, y in zip(a, b))
    assert not all(np.array_equal(x.video, y.video) for x, y in zip(a, c))
    clip = a[0]
    assert clip.video.shape == (17, 64, 64, 3) and clip.video.dtype == np.float32
    assert 0.0 <= clip.video.min() and clip.video.max() <= 1.0
    assert clip.caption == data.caption(clip.things, clip.background)


def test_held_out_pairs_never_appear_in_training_draws_and_only_when_asked():
    rng = np.random.default_rng(0)
    pairs = {(t.colour, t.shape) for _ in range(300) for t in data.sample(rng).things}
    assert not pairs & set(data.HELD_OUT) and len(pairs) == 15 - len(data.HELD_OUT)
    firsts = [data.sample(rng, held_out=True, two=0).things[0] for _ in range(20)]
    assert all((t.colour, t.shape) in data.HELD_OUT for t in firsts)


def test_fixed_words_are_what_the_clip_shows_and_says():
    clip = data.sample(np.random.default_rng(1), colour="blue", shape="triangle", motion="up", background="dark")
    (thing,) = clip.things
    assert (thing.colour, thing.shape, thing.motion) == ("blue", "triangle", "up")
    assert clip.caption.startswith(f"a {thing.size} blue triangle moving up") and clip.caption.endswith("dark background")
    ys = [y for _, y in thing.path]
    assert ys == sorted(ys, reverse=True) and ys[0] - ys[-1] == pytest.approx(1.5 * 16)


def _middles(placement, count=40, **fixed):
    rng = np.random.default_rng(11)
    things = [data.sample(rng, two=0, placement=placement, **fixed).things[0] for _ in range(count)]
    return np.array([(np.min(t.path, axis=0) + np.max(t.path, axis=0)) / 2 for t in things])  # the span's middle


@pytest.mark.parametrize("motion", ["left", "up", "diagonally", "bouncing", "still"])
def test_a_centred_clip_s_caption_settles_where_its_shape_goes_and_anywhere_does_not(motion):
    centred = _middles("centred", motion=motion, size="big")
    assert np.abs(centred - 32).max() <= data.JITTER + 1e-6  # the path's middle, whatever the start
    assert centred.std(axis=0).min() > 1.0  # but not one fixed clip either
    anywhere = _middles("anywhere", motion=motion, size="big")
    assert np.abs(anywhere - 32).max() > 2 * data.JITTER
    rng = np.random.default_rng(3)
    for _ in range(20):  # every path stays inside the frame
        for thing in data.sample(rng, motion=motion, two=1.0).things:
            half = data.SIZES[thing.size]
            assert all(half <= x <= 64 - half and half <= y <= 64 - half for x, y in thing.path), thing


def test_anywhere_is_the_vae_s_placement_and_a_wrong_one_is_named():
    from edit.toy import train

    rng = np.random.default_rng(4)
    clips = train._clips(np.random.default_rng(4), 30, 17, 64)
    again = [data.sample(rng, placement="anywhere") for _ in range(30)]
    assert [c.things for c in clips] == [c.things for c in again]
    assert train.Config().placement == "centred"
    with pytest.raises(ValueError, match="placement: expected one of"):
        data.sample(rng, placement="middle")


def test_the_reader_names_the_colour_and_direction_of_every_directional_clip():
    rng = np.random.default_rng(5)
    clips = [c for c in (data.sample(rng, two=0) for _ in range(120)) if c.things[0].motion in check.DIRECTIONS]
    assert len(clips) > 50
    for clip in clips:
        thing = clip.things[0]
        assert check.matches(check.read(clip.video), thing.colour, thing.motion), clip.caption


def test_the_reader_can_say_no():
    clip = data.sample(np.random.default_rng(2), colour="red", shape="circle", motion="left", two=0)
    frozen = np.repeat(clip.video[:1], len(clip.video), axis=0)  # what a cache that reuses too much shows
    assert check.read(frozen).direction == "still"
    reversed_ = clip.video[::-1]
    assert check.read(reversed_).direction == "right"
    recoloured = clip.video[..., [2, 1, 0]]  # red becomes blue-ish
    assert check.read(recoloured).colour != "red"
    blank = np.full_like(clip.video, 0.1)
    assert check.read(blank) == check.Reading(None, None, (0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="video: expected"):
        check.read(clip.video[0])


def _weights(folder):
    from safetensors.torch import load_file

    return {part: load_file(next((folder / part).glob("*.safetensors"))) for part in ("transformer", "vae", "text_encoder")}


def test_training_interrupted_and_resumed_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    from edit.toy import train

    whole = train.run(train.SMOKE, tmp_path / "w1", tmp_path / "out1")
    assert set(whole) >= {"seconds", "reconstruction_psnr", "vae_final_loss", "decoder_final_loss",
                          "transformer_final_loss"}
    # the padding's key and value stay exactly zero through training (train.condition_sharply)
    weights = _weights(tmp_path / "out1")["transformer"]
    fixed = [k for k in weights if k.startswith("condition_embedder.text_embedder.") and k.endswith(".bias")
             or ".attn2.to_k.bias" in k or ".attn2.to_v.bias" in k]
    assert len(fixed) == 2 + 2 * train.SMOKE.transformer["num_layers"]
    assert all(not weights[k].any() for k in fixed)
    real_save = train.Checkpoint.save
    # a Ctrl-C just after the first checkpoint of the decoder and of the transformer, and just after
    # the transformer's last (its phase finished, the decoder not begun)
    stops = {"decoder": lambda state: state["phase"] == "decoder",
             "transformer": lambda state: state["phase"] == "transformer",
             "transformer-end": lambda state: state["phase"] == "transformer" and state["step"] == train.SMOKE.steps}
    for name, stop in stops.items():
        saves = []

        def save_then_stop(self, state, stop=stop, saves=saves):
            real_save(self, state)
            saves.append(state)
            if stop(state):
                raise KeyboardInterrupt
        monkeypatch.setattr(train.Checkpoint, "save", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            train.run(train.SMOKE, tmp_path / name, tmp_path / f"out-{name}")
        monkeypatch.setattr(train.Checkpoint, "save", real_save)
        assert stop(saves[-1]) and not (tmp_path / f"out-{name}").exists()
        if name == "transformer-end":  # a copy, to resume with a longer decoder phase below
            shutil.copytree(tmp_path / name, tmp_path / "longer")
            last = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["transformer"]
            shipped = _weights(tmp_path / "out1")["transformer"]
            assert any(not torch.equal(last[k], shipped[k]) for k in shipped)  # the weight average is shipped
            # a finished transformer is not trained or its pool encoded again
            monkeypatch.setattr(train, "encode_pool", lambda *a: pytest.fail("encoded the pool again"))
        train.run(train.SMOKE, tmp_path / name, tmp_path / f"out-{name}")
        monkeypatch.undo()
        first, second = _weights(tmp_path / "out1"), _weights(tmp_path / f"out-{name}")
        for part in first:
            assert first[part].keys() == second[part].keys()
            assert all(torch.equal(first[part][k], second[part][k]) for k in first[part]), (name, part)
    import attrs

    # a field of a phase the checkpoint has begun is refused, by name; one of a later phase is not,
    # and changes only what that phase trains
    with pytest.raises(ValueError, match=r"workdir: .* another config \(in phase 'decoder': steps differ\)"):
        train.run(attrs.evolve(train.SMOKE, steps=4), tmp_path / "transformer", tmp_path / "out3")
    assert torch.load(tmp_path / "longer" / "checkpoint.pt", weights_only=False)["seconds"] > 0  # time so far
    train.run(attrs.evolve(train.SMOKE, decoder_steps=4), tmp_path / "longer", tmp_path / "out-longer")
    first, second = _weights(tmp_path / "out1"), _weights(tmp_path / "out-longer")
    for part in ("transformer", "text_encoder"):
        assert all(torch.equal(first[part][k], second[part][k]) for k in first[part]), part
    assert not all(torch.equal(first["vae"][k], second["vae"][k]) for k in first["vae"])

    # the folder it wrote is a complete pipeline: it loads offline, generates deterministically,
    # and with no cache it is diffusers' WanPipeline bit for bit
    from diffusers import WanPipeline

    import edit

    pipe = edit.toy_pipeline(folder=tmp_path / "out1")
    kwargs = dict(num_frames=5, height=32, width=32, num_inference_steps=3, output_type="latent")

    def gen(p):
        return p("a red circle moving left on a dark background", generator=torch.Generator().manual_seed(0),
                 **kwargs).frames
    assert torch.equal(gen(pipe), gen(pipe))
    assert torch.equal(gen(pipe), gen(WanPipeline(**pipe.components)))


def test_prompt_embeds_are_the_pipelines_own():
    from diffusers import WanPipeline

    from edit.toy import train

    pipe = WanPipeline(**train.build(train.SMOKE))
    prompts = [c.caption for c in data.batch(0, 3)] + [""]
    with torch.no_grad():
        ours = train.prompt_embeds(pipe, prompts)
        theirs = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=512, device=torch.device("cpu"))
    assert torch.equal(ours, theirs)


def test_a_missing_toy_folder_says_how_to_make_one(tmp_path):
    import edit

    with pytest.raises(FileNotFoundError, match="folder: no trained toy pipeline .*python -m edit.toy.train"):
        edit.toy_pipeline(folder=tmp_path)


def test_teacache_picks_the_coefficients_fitted_on_the_transformer_s_architecture(recwarn, monkeypatch):
    from types import SimpleNamespace

    import edit
    import edit.checks
    from edit.checks import variant_for

    monkeypatch.setattr(edit.checks, "_WARNED", set())  # the warning is once per process

    def arch(layers, heads, dim):
        return SimpleNamespace(config=SimpleNamespace(num_layers=layers, num_attention_heads=heads, attention_head_dim=dim))
    assert variant_for(arch(30, 12, 128)) == "t2v-1.3B" and variant_for(arch(40, 40, 128)) == "t2v-14B"
    assert variant_for(arch(4, 2, 12)) is None and variant_for(object()) is None
    pipe = edit.tiny_pipeline()
    pipe.enable_cache("teacache")  # no variant fits the tiny model: the default, with its warning
    assert pipe.cache.policy.wan_variant == "t2v-1.3B" and any("fitted on 30 layers" in str(w.message) for w in recwarn)
    pipe.enable_cache("teacache", wan_variant="t2v-14B")  # an explicit variant is kept
    assert pipe.cache.policy.wan_variant == "t2v-14B"


def test_the_cli_toy_model_without_weights_is_one_line(tmp_path, capsys, monkeypatch):
    import edit.toy.model
    from edit.cli import main

    monkeypatch.setattr(edit.toy.model, "WEIGHTS", tmp_path / "none")
    assert main(["generate", "a red circle moving left", "--model", "toy", "--out", str(tmp_path / "f.gif")]) == 2
    assert capsys.readouterr().err.startswith("edit: error: --model: the toy weights are not in ")
    assert not (tmp_path / "f.gif").exists()


def test_the_word_tokenizer_knows_every_caption_word_and_nothing_else(tmp_path):
    from transformers import AutoTokenizer

    from edit.toy import words

    tok = words.tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    rng = np.random.default_rng(5)
    for _ in range(300):
        caption = data.sample(rng, held_out=None, frames=2, height=16, width=16).caption
        ids = tok(caption).input_ids
        assert unk not in ids and ids[-1] == tok.eos_token_id, caption
        assert len(ids) == len(caption.split()) + 1 <= 32  # prompt_embeds encodes 32 tokens
    assert tok("").input_ids == [tok.eos_token_id]  # the negative prompt is one token, as with T5
    assert tok("A RED Circle").input_ids == tok("a red circle").input_ids
    assert tok("a purple circle").input_ids[1] == unk
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again("a big white square on a dark background").input_ids == tok(
        "a big white square on a dark background").input_ids


def test_training_cross_attention_over_the_caption_tokens_is_generation_s_over_512():
    from diffusers import WanPipeline
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from edit.toy import train

    parts = train.build(train.SMOKE)
    pipe = WanPipeline(**parts)
    prompts = [c.caption for c in data.batch(0, 3)] + [""]
    transformer = parts["transformer"].eval()
    x = torch.randn(4, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([950.0, 500.0, 120.0, 3.0])
    with torch.no_grad():
        text = train.prompt_embeds(pipe, prompts)
        generation = transformer(x, t, text, return_dict=False)[0]
        train.cross_attention(transformer, train.PaddedCrossAttention())
        training = transformer(x, t, text[:, :train.ENCODED], return_dict=False)[0]
        # it rests on condition_sharply's zero key and value biases: padding is key 0, value 0
        transformer.blocks[0].attn2.to_v.bias.add_(0.1)
        biased = transformer(x, t, text[:, :train.ENCODED], return_dict=False)[0]
        train.cross_attention(transformer, WanAttnProcessor())
        biased_reference = transformer(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(training, generation, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(biased, biased_reference, atol=1e-3)
    with pytest.raises(ValueError, match="encoder_hidden_states: 513 tokens"):
        train.cross_attention(transformer, train.PaddedCrossAttention())
        transformer(x, t, torch.cat([text, text[:, :1]], dim=1), return_dict=False)


def test_steadiness_is_zero_for_a_still_latent_and_blind_to_scale():
    from edit.toy import train

    still = torch.randn(2, 16, 1, 4, 4).expand(2, 16, 5, 4, 4)
    assert float(train.steadiness(still)) == 0.0
    moving = torch.randn(2, 16, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(train.steadiness(moving)) > 1.0  # independent frames: about 2
    torch.testing.assert_close(train.steadiness(10 * moving), train.steadiness(moving))
    assert float(train.steadiness(moving[:, :, :1])) == 0.0  # one frame: nothing to compare


def test_the_default_model_is_the_toy_once_trained_else_tiny_and_edit_model_wins(tmp_path, monkeypatch):
    from edit.cli import build_parser
    from edit.toy import model

    monkeypatch.delenv("EDIT_MODEL", raising=False)
    monkeypatch.setattr(model, "WEIGHTS", tmp_path)
    assert model.default_model() == "tiny" and not model.trained()
    (tmp_path / "model_index.json").write_text("{}")
    assert model.default_model() == "toy" and model.trained()
    assert build_parser().parse_args(["generate", "a fox"]).model == "toy"
    monkeypatch.setenv("EDIT_MODEL", "tiny")
    assert build_parser().parse_args(["generate", "a fox"]).model == "tiny"


def test_the_toy_pipeline_makes_the_size_asked_for():
    # the VAE is x4 in space; a config left at Wan's x8 made the pipeline draw 8x8 latents for
    # 64x64 and decode 32x32, unlike anything the transformer trained on
    from diffusers import WanPipeline

    from edit.toy import train

    parts = train.build(train.SMOKE)
    with torch.no_grad():
        latent = parts["vae"].encode(torch.zeros(1, 3, 5, 32, 32)).latent_dist.mode()
    assert latent.shape[-1] == 32 // parts["vae"].config.scale_factor_spatial
    assert latent.shape[2] == 1 + 4 // parts["vae"].config.scale_factor_temporal
    pipe = WanPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a big red circle moving left on a dark background", num_frames=5, height=32, width=32,
                  num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3)
