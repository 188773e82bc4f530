"""Image to video: `EditWanImageToVideoPipeline` (Wan2.1 I2V and FLF2V, Wan2.2 I2V A14B, Wan2.2
TI2V-5B) against diffusers' `WanImageToVideoPipeline`, and caching under image conditioning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import SIZE, SMALL, generate, generate_i2v, i2v_components, i2v_images
from diffusers import WanImageToVideoPipeline

from edit import EditWanImageToVideoPipeline, EditWanPipeline
from edit.graph import Embed, Plan

PROMPT = "a red fox running through snow"
FIRST, LAST = i2v_images()

CASES = {
    "wan2.1": ("wan2.1", {}),
    "wan2.1-no-cfg": ("wan2.1", {"guidance_scale": 1.0}),
    "flf2v": ("flf2v", {"last_image": LAST}),
    "wan2.2": ("wan2.2", {"num_inference_steps": 4}),
    "wan2.2-guidance-2": ("wan2.2", {"num_inference_steps": 4, "guidance_scale_2": 2.0}),
    "wan2.2-flf2v": ("wan2.2", {"num_inference_steps": 4, "last_image": LAST}),
    "ti2v": ("ti2v", {}),
    "ti2v-two-videos": ("ti2v", {"num_videos_per_prompt": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_image_to_video_equals_diffusers(case):
    kind, kwargs = CASES[case]
    comps = i2v_components(kind)
    ref = generate_i2v(WanImageToVideoPipeline(**comps), **kwargs)
    out = generate_i2v(EditWanImageToVideoPipeline(**comps), **kwargs)
    assert torch.equal(out, ref)


def test_decoded_frames_and_a_step_callback_equal_diffusers():
    comps = i2v_components("wan2.1")

    def callback(pipe, step, t, kwargs):
        return {"latents": kwargs["latents"] * 0.9, "prompt_embeds": kwargs["prompt_embeds"] + 0.01}

    kwargs = dict(output_type="np", callback_on_step_end=callback,
                  callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    ref = generate_i2v(WanImageToVideoPipeline(**comps), **kwargs)
    out = generate_i2v(EditWanImageToVideoPipeline(**comps), **kwargs)
    assert isinstance(out, np.ndarray) and np.array_equal(out, ref)


@pytest.mark.parametrize("kind, condition, image_embeds", [("wan2.1", "concat", True), ("flf2v", "concat", True),
                                                          ("wan2.2", "concat", False), ("ti2v", "first_frame", False)])
def test_the_plan_says_how_the_run_is_conditioned(kind, condition, image_embeds):
    pipe = EditWanImageToVideoPipeline(**i2v_components(kind))
    plan = pipe.compile(4, 5.0, **SIZE)
    assert (plan.spec.condition, plan.spec.image_embeds) == (condition, image_embeds)
    names = ("condition",) + (("mask",) if condition == "first_frame" else ()) + (("image",) if image_embeds else ())
    assert plan.spec.conditions == names
    text = plan.to_text()
    for name in names:
        assert f"%in.{name} = input {name}" in text
    for embed in plan.nodes(Embed):
        assert set(plan.inputs_of(embed)) == {"latents", "text", *names}
    if kind == "wan2.2":
        assert set(plan.spec.step_models) == {"transformer", "transformer_2"}  # the boundary is inside the run


@pytest.mark.parametrize("kind, kwargs", [("wan2.1", {}), ("wan2.2", {"num_inference_steps": 4}), ("ti2v", {}),
                                          ("flf2v", {"last_image": LAST})])
def test_the_images_condition_the_run(kind, kwargs):
    """The parity above compares runs the images change: another first (or last) image, another video."""
    pipe = EditWanImageToVideoPipeline(**i2v_components(kind))
    out = generate_i2v(pipe, **kwargs)
    if "last_image" in kwargs:
        assert not torch.equal(generate_i2v(pipe, **{**kwargs, "last_image": FIRST}), out)
    assert not torch.equal(generate_i2v(pipe, image=LAST, **kwargs), out)


def test_a_text_to_video_plan_is_refused_for_image_to_video_and_back():
    """TI2V runs both tasks on one transformer: the plan's conditioning, not its weights, tells them apart."""
    comps = i2v_components("ti2v")
    t2v = EditWanPipeline(**{k: v for k, v in comps.items()})
    i2v = EditWanImageToVideoPipeline(**comps)
    t2v_plan, i2v_plan = t2v.compile(3, 5.0, **SIZE), i2v.compile(3, 5.0, **SIZE)
    with pytest.raises(ValueError, match="condition"):
        generate_i2v(i2v, plan=t2v_plan)
    with pytest.raises(ValueError, match="condition"):
        generate(t2v, plan=i2v_plan)
    assert torch.equal(generate_i2v(i2v, plan=i2v_plan), generate_i2v(i2v))


@pytest.mark.filterwarnings("ignore:teacache. the")
def test_a_cached_two_expert_plan_replays_and_refuses_other_weights(tmp_path):
    comps = i2v_components("wan2.2")
    pipe = EditWanImageToVideoPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=1.5, coefficients=[1.0, 0.0], use_ret_steps=False,
                      per_model={"transformer_2": {"rel_l1_thresh": 0.8}})
    plan = pipe.compile(8, 5.0, **SIZE)
    assert "S" in plan.summary()
    path = plan.save(tmp_path / "plan.json")
    direct = generate_i2v(pipe, num_inference_steps=8)
    assert torch.equal(generate_i2v(pipe, num_inference_steps=8, plan=Plan.load(path)), direct)
    other = dict(comps, transformer_2=copy.deepcopy(comps["transformer_2"]))
    with torch.no_grad():
        next(other["transformer_2"].parameters()).add_(1.0)
    pipe_2 = EditWanImageToVideoPipeline(**other)
    pipe_2.enable_cache("teacache", rel_l1_thresh=0.3)
    with pytest.raises(ValueError, match="transformer_2.weights"):
        generate_i2v(pipe_2, num_inference_steps=8, plan=Plan.load(path))


# -- TI2V: a timestep per patch, one decision signal per sample ----------------------------------

def _embed_per_patch(m, x, timestep, text):
    rotary = m.rope(x)
    h = m.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
    temb, proj, enc, _ = m.condition_embedder(timestep.flatten(), text, None, timestep_seq_len=timestep.shape[1])
    return h, temb, proj.unflatten(2, (6, -1)), enc, rotary


def _head_per_patch(m, h, temb, shape):
    shift, scale = (m.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
    h = m.proj_out((m.norm_out(h.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(h))
    b, _, f, hh, ww = shape
    h = h.reshape(b, f, hh // 2, ww // 2, 1, 2, 2, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def teacache_ti2v(thresh, per_sample):
    """TeaCache without ret-steps (the time embedding's relative L1 accumulated, the identity
    polynomial; first and last steps forced). Its signal, `per_sample`: the time embedding at the
    sample's own timestep, one value per sample; else the per-patch embedding read as one tensor,
    whose first-frame patches (timestep 0 at every step) dilute each step's change."""
    def forward(st, m, i, n, x, timestep, t, text):
        h, temb, e0, enc, rotary = _embed_per_patch(m, x, timestep, text)
        signal = m.condition_embedder(t.expand(x.shape[0]).float(), text, None)[0] if per_sample else temb
        if i in (0, n - 1):
            st["acc"], compute = 0.0, True
        else:
            prev = st["prev"].float()
            st["acc"] += ((signal.float() - prev).abs().mean() / prev.abs().mean()).item()
            compute = st["acc"] >= thresh
            if compute:
                st["acc"] = 0.0
        st["prev"] = signal
        if compute:
            out = h
            for block in m.blocks:
                out = block(out, enc, e0, rotary)
            st["residual"] = out - h
        else:
            out = h + st["residual"]
        return _head_per_patch(m, out, temb, x.shape), compute
    return forward


@torch.no_grad()  # autograd-enabled kernels differ in the last bits
def ti2v_reference(comps, forward_fn, steps, guidance=5.0, seed=7):
    """TI2V image to video as diffusers' loop runs it (the first latent frame is the image's, its
    patches' timestep 0), with `forward_fn` for the transformer. Returns latents and trace."""
    pipe = WanImageToVideoPipeline(**comps)
    pos, neg = pipe.encode_prompt(PROMPT, None, True, max_sequence_length=512, device="cpu")
    sched = copy.deepcopy(comps["scheduler"])
    sched.set_timesteps(steps, device="cpu")
    sched.set_begin_index(0)
    image = pipe.video_processor.preprocess(FIRST, height=SMALL["height"], width=SMALL["width"]).float()
    latents, condition, mask = pipe.prepare_latents(image, 1, 16, SMALL["height"], SMALL["width"], SMALL["num_frames"],
                                                    torch.float32, "cpu", torch.Generator("cpu").manual_seed(seed))
    states, trace = {"cond": {}, "uncond": {}}, {("cond", 0): "", ("uncond", 0): ""}
    for i, t in enumerate(sched.timesteps):
        x = (1 - mask) * condition + mask * latents
        timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0)
        preds = {}
        for branch, text in (("cond", pos), ("uncond", neg)):
            preds[branch], compute = forward_fn(states[branch], comps["transformer"], i, steps, x, timestep, t, text)
            trace[(branch, 0)] += "C" if compute else "S"
        noise = preds["uncond"] + guidance * (preds["cond"] - preds["uncond"])
        latents = sched.step(noise, t, latents, return_dict=False)[0]
    return (1 - mask) * condition + mask * latents, trace


TI2V_THRESH = 0.8  # traces CSCCSCCSCC per sample, CSCSCSCSSC per patch


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "run-time"])
def test_ti2v_teacache_decides_from_one_signal_per_sample(fold):
    comps = i2v_components("ti2v")
    ref_latents, ref_trace = ti2v_reference(comps, teacache_ti2v(TI2V_THRESH, per_sample=True), 10)
    # reading the per-patch embedding as one tensor decides otherwise: this test tells them apart
    _, per_patch = ti2v_reference(comps, teacache_ti2v(TI2V_THRESH, per_sample=False), 10)
    assert per_patch != ref_trace and "S" in ref_trace[("cond", 0)], (ref_trace, per_patch)
    pipe = EditWanImageToVideoPipeline(**comps)
    pipe.enable_cache("teacache", rel_l1_thresh=TI2V_THRESH, coefficients=[1.0, 0.0], use_ret_steps=False, fold=fold)
    out = generate_i2v(pipe, num_inference_steps=10)
    assert pipe.cache.stats.trace == ref_trace
    assert torch.equal(out, ref_latents)


def fbcache_ti2v(thresh):
    """First-Block-Cache (REFERENCE.md): block 0 always runs; the rest is reused while block 0's
    residual moves by less than `thresh` from the last computed step's. Its signal is a hidden
    state, the same under per-patch timesteps."""
    def forward(st, m, i, n, x, timestep, t, text):
        h, temb, e0, enc, rotary = _embed_per_patch(m, x, timestep, text)
        out0 = m.blocks[0](h, enc, e0, rotary)
        r0, prev = out0 - h, st.get("prev_r0")
        hit = prev is not None and ((r0 - prev).abs().mean() / prev.abs().mean()).item() < thresh
        if hit:
            out = out0 + st["rest"]
        else:
            st["prev_r0"], out = r0, out0
            for block in m.blocks[1:]:
                out = block(out, enc, e0, rotary)
            st["rest"] = out - out0
        return _head_per_patch(m, out, temb, x.shape), not hit
    return forward


def test_ti2v_fbcache_matches_the_reference():
    comps = i2v_components("ti2v")
    ref_latents, ref_trace = ti2v_reference(comps, fbcache_ti2v(0.1), 8)  # CSSSSSCS
    assert "S" in ref_trace[("cond", 0)] and "C" in ref_trace[("cond", 0)][1:], ref_trace
    pipe = EditWanImageToVideoPipeline(**comps)
    pipe.enable_cache("fbcache", rel_l1_thresh=0.1)
    out = generate_i2v(pipe, num_inference_steps=8)
    assert pipe.cache.stats.trace == ref_trace
    assert torch.equal(out, ref_latents)


# -- diffusers' own cache hooks, published coefficients, loading, offloading, bad input ----------

def _hooks():
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    return {"fbc": lambda pipe: FirstBlockCacheConfig(threshold=0.2),
            "magcache": lambda pipe: MagCacheConfig(mag_ratios=[1.0] * 6, num_inference_steps=6, threshold=0.5,
                                                    retention_ratio=0.0),
            "pab": lambda pipe: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                spatial_attention_timestep_skip_range=(-1, 1001),
                                                                current_timestep_callback=lambda: pipe.current_timestep),
            "taylorseer": lambda pipe: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                             use_lite_mode=True)}


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2", "ti2v"])
@pytest.mark.parametrize("name", list(_hooks()))
def test_diffusers_hooks_equal_wan_image_to_video_pipeline(name, kind):
    results = []
    experts = ("transformer", "transformer_2") if kind == "wan2.2" else ("transformer",)
    for cls in (WanImageToVideoPipeline, EditWanImageToVideoPipeline):
        comps = i2v_components(kind)
        for key in experts:
            comps[key] = copy.deepcopy(comps[key])  # hooks attach to the models
        pipe = cls(**comps)
        for key in experts:
            getattr(pipe, key).enable_cache(_hooks()[name](pipe))
        results.append(generate_i2v(pipe, num_inference_steps=6))
        assert torch.equal(generate_i2v(pipe, num_inference_steps=6), results[-1])  # no state left from the last call
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], generate_i2v(WanImageToVideoPipeline(**i2v_components(kind)),
                                                    num_inference_steps=6))  # the hooks did change the run


#: TeaCache4Wan2.1's image-to-video polynomials, transcribed from shared/REFERENCE.md (the table
#: the library's own was typed from separately): variant -> (use_ret_steps=True, use_ret_steps=False).
I2V_COEFFICIENTS = {
    "i2v-480P": ([2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01],
                 [-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01]),
    "i2v-720P": ([8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02],
                 [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683]),
}


@pytest.mark.parametrize("variant", list(I2V_COEFFICIENTS))
@pytest.mark.parametrize("use_ret_steps", [True, False])
@pytest.mark.filterwarnings("ignore:teacache. the i2v")
def test_the_published_i2v_teacache_coefficients_are_selectable(variant, use_ret_steps):
    pipe = EditWanImageToVideoPipeline(**i2v_components("wan2.1"))
    pipe.enable_cache("teacache", wan_variant=variant, use_ret_steps=use_ret_steps)
    assert pipe.cache.policy.coefficients == tuple(I2V_COEFFICIENTS[variant][0 if use_ret_steps else 1])
    plan = pipe.compile(4, 5.0, **SIZE)
    assert plan.spec.image_embeds and f"wan_variant='{variant}'" in pipe.cache_pipeline


def test_a_14b_image_to_video_checkpoint_takes_the_i2v_coefficients_by_default():
    from types import SimpleNamespace

    from edit.checks import variant_for

    wan14b = SimpleNamespace(config=SimpleNamespace(num_layers=40, num_attention_heads=40, attention_head_dim=128))
    assert variant_for(wan14b, "i2v") == "i2v-480P" and variant_for(wan14b) == "t2v-14B"
    assert EditWanImageToVideoPipeline._task == "i2v" and EditWanPipeline._task == "t2v"


@pytest.mark.parametrize("kind", ["wan2.1", "wan2.2"])
def test_from_pretrained_loads_an_image_to_video_folder(tmp_path, kind):
    comps = i2v_components(kind)
    WanImageToVideoPipeline(**comps).save_pretrained(tmp_path / kind)
    loaded = EditWanImageToVideoPipeline.from_pretrained(tmp_path / kind)
    assert isinstance(loaded, EditWanImageToVideoPipeline)
    assert (loaded.image_encoder is not None) == (kind == "wan2.1")
    assert (loaded.transformer_2 is not None) == (kind == "wan2.2")
    kwargs = {"num_inference_steps": 4}
    assert torch.equal(generate_i2v(loaded, **kwargs), generate_i2v(WanImageToVideoPipeline(**comps), **kwargs))


def test_model_cpu_offload_moves_one_expert_at_a_time():
    comps = i2v_components("wan2.2")
    ref = generate_i2v(WanImageToVideoPipeline(**comps), num_inference_steps=4)
    comps = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()}
    pipe = EditWanImageToVideoPipeline(**comps)
    pipe.enable_model_cpu_offload(device="cpu")  # accelerate's CpuOffload hooks, on this CPU
    calls = []
    for key in ("transformer", "transformer_2"):
        hook = getattr(pipe, key)._hf_hook
        original = hook.pre_forward
        hook.pre_forward = lambda module, *a, key=key, original=original, **k: (calls.append(key),
                                                                                 original(module, *a, **k))[1]
    assert torch.equal(generate_i2v(pipe, num_inference_steps=4), ref)
    assert calls == ["transformer", "transformer_2"]  # each expert onloaded once, for its own steps


def test_no_image_is_refused_before_any_work():
    pipe = EditWanImageToVideoPipeline(**i2v_components("wan2.1"))
    embeds = torch.zeros(1, 17, 16)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    pipe.vae.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="image: the condition video is encoded from it"):
        pipe(None, PROMPT, image_embeds=embeds, **SMALL, output_type="latent")
    assert calls == []


@pytest.mark.parametrize("kind, last, match", [
    ("ti2v", True, "last_image: a TI2V pipeline .* first frame only"),
    ("wan2.1", True, "last_image: this transformer embeds one image"),
    ("flf2v", False, "last_image: this FLF2V transformer embeds two images"),
])
def test_first_last_frame_calls_the_model_cannot_take_are_refused(kind, last, match):
    pipe = EditWanImageToVideoPipeline(**i2v_components(kind))
    calls = []
    pipe.vae.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=match):
        generate_i2v(pipe, last_image=LAST if last else None)
    assert calls == []
