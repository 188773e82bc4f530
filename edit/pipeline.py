"""`EditWanPipeline`: diffusers' `WanPipeline` whose denoising loop is a compiled EDiT plan."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from diffusers import WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import get_module_execution_device

from edit.checks import check_call, check_enable_cache
from edit.graph import Graph, RunSpec, Unit, check_granularity, lower
from edit.passes import PassManager, apply_policy, fold_static, make_policy, regroup, schedule_prefetch
from edit.runtime import Program, RunState, StepEnd, WanAdapter, compile_program
from edit.runtime.cache import CacheController
from edit.runtime.offload import forward_hooks

logger = logging.get_logger(__name__)


class EditWanPipeline(WanPipeline):
    """A drop-in `WanPipeline`: same components, call signature and outputs.

    `__call__` encodes the prompt (diffusers), compiles the plan (lower -> passes -> verify),
    executes it with the EDiT runtime and decodes with the VAE (diffusers). With no cache the
    result is bit-for-bit identical to `WanPipeline`.

    >>> import edit
    >>> pipe = edit.tiny_pipeline()
    >>> plan = pipe.compile(num_inference_steps=2, guidance_scale=5.0)
    >>> print(plan.summary())
    step  cond    uncond
       0  C       C
       1  C       C
    """

    def __init__(self, tokenizer, text_encoder, vae, scheduler, transformer=None, transformer_2=None,
                 boundary_ratio: float | None = None, expand_timesteps: bool = False):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                         transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
                         expand_timesteps=expand_timesteps)
        self._program_cache: tuple[Any, Program] | None = None
        self.cache: CacheController | None = None
        self.pass_manager: PassManager | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, device: str | torch.device | None = None,
                        **kwargs) -> EditWanPipeline:
        """diffusers' `from_pretrained` (hub id or local folder), then `.to(device)` when given.

        Weights that safetensors left at unaligned addresses are copied to fresh (64-byte aligned)
        storage: CPU BLAS kernels pick their summation order by alignment, so without this a
        loaded model differs in the last bits from the same weights built in memory.
        """
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        pipe = pipe.to(device) if device is not None else pipe
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                _realign(component)
        return pipe

    # -- planning -----------------------------------------------------------------------------
    @property
    def adapter(self) -> WanAdapter:
        if self.transformer is None:
            raise ValueError("transformer: EditWanPipeline needs a `transformer` component")
        if getattr(self, "_adapter", None) is None or self._adapter.model is not self.transformer:
            self._adapter = WanAdapter(self.transformer)
        return self._adapter

    def run_spec(self, num_inference_steps: int, guidance_scale: float,
                 timesteps: torch.Tensor | None = None) -> RunSpec:
        """The `RunSpec` of a call with these settings (timesteps from the scheduler if not given)."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected an int >= 1, got {num_inference_steps!r}")
        if timesteps is None:
            timesteps = self._timesteps(num_inference_steps, "cpu")
        branches = ("cond", "uncond") if guidance_scale > 1.0 else ("cond",)
        cache = self.cache
        return RunSpec(num_steps=len(timesteps), timesteps=[float(t) for t in timesteps],
                       num_blocks=self.adapter.num_blocks, branches=branches, guidance_scale=guidance_scale,
                       granularity=cache.granularity if cache else "stack",
                       generation=cache.generation if cache else 0)

    def _timesteps(self, num_inference_steps: int, device) -> torch.Tensor:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps

    def build_plan(self, spec: RunSpec, signals=None) -> Graph:
        """Lower `spec`, then the cache passes: regroup -> apply_policy -> fold_static (when the
        policy's signal is static and `signals`, step -> (e, e0), is given) -> schedule_prefetch (when
        the cache has a prefetch lead). Verified after each pass."""
        graph = lower(spec)
        cache = self.cache
        if cache is None:
            return graph
        passes = [(lambda g: regroup(g, cache.granularity), "regroup"),
                  (lambda g: apply_policy(g, cache.policy), "apply_policy")]
        if cache.fold and signals is not None and cache.policy.static_signal:
            passes.append((lambda g: fold_static(g, cache.policy, signals), "fold_static"))
        if cache.prefetch is not None:
            passes.append((lambda g: schedule_prefetch(g, cache.prefetch), "schedule_prefetch"))
        for fn, name in passes:
            fn.__name__ = name
        passes = [fn for fn, _ in passes]
        self.pass_manager = PassManager(passes, debug=True)
        return self.pass_manager.run(graph)

    def compile(self, num_inference_steps: int = 50, guidance_scale: float = 5.0, *, height: int = 480,
                width: int = 832, num_frames: int = 81, batch_size: int = 1) -> Graph:
        """The plan a call with these settings would run, for inspection, editing and replay.

        With a static cache policy the plan is folded: the size and batch are needed to compute
        the policy's signals exactly as the run will.
        """
        spec = self.run_spec(num_inference_steps, guidance_scale)
        num_frames, height, width = self._fit_video_size(num_frames, height, width)
        shape = self._latent_shape(batch_size, num_frames, height, width)
        timesteps = self._timesteps(num_inference_steps, self._execution_device)
        with forward_hooks(self.transformer):  # folding evaluates the time embedding
            return self.build_plan(spec, self._signals(timesteps, shape))

    def _latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, self.transformer.config.in_channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)

    def _signals(self, timesteps: torch.Tensor, shape: tuple[int, ...]):
        """step -> (e, e0), computed from the weights and the timestep as the run computes them."""
        probe = torch.empty(shape, device=timesteps.device)
        state = RunState(adapter=self.adapter, scheduler=None, timesteps=timesteps, inputs={},
                         expand_timesteps=bool(self.config.expand_timesteps))

        def signals(step: int):
            with torch.no_grad():
                return self.adapter.time_signals(state.timestep(step, probe), self.transformer.dtype)
        return signals

    # -- caching ------------------------------------------------------------------------------
    def enable_cache(self, policy: Any = "teacache", *, num_inference_steps: int | None = None,
                     granularity: str | int = "stack", store: Any = None, fold: bool = True,
                     prefetch: int | None = None, **policy_kwargs: Any) -> CacheController:
        """Turn on step caching with `policy` (a registered name, a CachePolicy subclass or instance).

        `granularity`: "stack", "per_block" or an int k (units of k blocks). `store`: where residuals
        live (default: a GPUStore on the execution device). `fold`: evaluate static policies
        (TeaCache) at compile time into a fixed schedule. `prefetch`: issue every residual read this
        many cells (step, branch, unit) ahead (`edit.passes.schedule_prefetch`; see `prefetch_lead`),
        so a CPU/disk tier's transfer overlaps compute. Returns `pipe.cache`.
        """
        check_enable_cache(store=store, fold=fold)
        policy = make_policy(policy, **policy_kwargs)
        if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1):
            raise ValueError(f"prefetch: expected None or an int >= 1 (cells ahead of each read), got {prefetch!r}")
        check_granularity(granularity, self.adapter.num_blocks)
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or
                                                not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps: expected an int >= 1 or None, got {num_inference_steps!r}")
        if store is None:
            from edit.runtime.store import GPUStore
            store = GPUStore(device=self._execution_device)
        for method in ("put", "get"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store: expected a CacheStore (put/get), got {type(store).__name__}")
        self.cache = CacheController(policy, store=store, granularity=granularity,
                                     num_inference_steps=num_inference_steps, fold=bool(fold), prefetch=prefetch)
        self._program_cache = None
        return self.cache

    def disable_cache(self) -> None:
        """Back to the plain no-cache plan (bit-identical to diffusers)."""
        cache, self.cache, self._program_cache = self.cache, None, None
        clear = getattr(cache.store, "clear", None) if cache is not None else None
        try:  # the cache is off whatever the store does
            if callable(clear):
                clear()
        except Exception as err:
            logger.warning(f"disable_cache: the store's clear() failed ({type(err).__name__}: {err}); "
                           "its entries were left in place")

    def _program(self, spec: RunSpec, plan: Graph | None, timesteps: torch.Tensor, shape: tuple) -> Program:
        if plan is not None:
            self._check_plan(plan, spec)
            return compile_program(plan)
        cache = self.cache
        key = (spec, tuple(shape), self.transformer.dtype, id(cache), cache and (cache.policy, cache.fold, cache.prefetch))
        if self._program_cache is None or self._program_cache[0] != key:
            self._program_cache = (key, compile_program(self.build_plan(spec, self._signals(timesteps, shape))))
        return self._program_cache[1]

    @staticmethod
    def _check_plan(plan: Graph, spec: RunSpec) -> None:
        if not isinstance(plan, Graph):
            raise TypeError(f"plan: expected an edit.graph.Graph (from pipe.compile), got {type(plan).__name__}")
        got = plan.spec
        if got is None:
            raise ValueError("plan: the graph has no RunSpec; build it with pipe.compile or edit.graph.lower")
        for field in ("num_steps", "branches", "num_blocks", "timesteps"):
            if getattr(got, field) != getattr(spec, field):
                raise ValueError(f"plan: its {field} {getattr(got, field)!r} does not match this call's "
                                 f"{getattr(spec, field)!r}")

    # -- the call -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = None,
        negative_prompt: str | list[str] = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str | None = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int], None] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_sequence_length: int = 512,
        plan: Graph | None = None,
    ) -> WanPipelineOutput | tuple:
        """Generate a video; arguments as `WanPipeline.__call__`, plus `plan` to replay a compiled graph."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, guidance_scale_2)
        check_call(self, height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale,
                   num_videos_per_prompt=num_videos_per_prompt, max_sequence_length=max_sequence_length,
                   output_type=output_type)
        if self.transformer_2 is not None or self.config.boundary_ratio is not None:
            raise ValueError("transformer_2/boundary_ratio: two-stage (Wan2.2 A14B) pipelines are not supported "
                             "by EditWanPipeline; use a single-transformer pipeline")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps: expected an int >= 1, got {num_inference_steps!r}")
        num_frames, height, width = self._fit_video_size(num_frames, height, width)

        self._guidance_scale = guidance_scale
        self._guidance_scale_2 = guidance_scale_2
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        if prompt is not None and isinstance(prompt, str):
            batch_size = 1
        elif prompt is not None and isinstance(prompt, list):
            batch_size = len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length, device=device)
        dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(batch_size * num_videos_per_prompt, self.transformer.config.in_channels,
                                       height, width, num_frames, torch.float32, device, generator, latents)
        self.adapter.check_latents(latents)
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)

        cache = self.cache
        if cache is not None and cache.num_inference_steps not in (None, num_inference_steps):
            raise ValueError(f"num_inference_steps: the cache was enabled for {cache.num_inference_steps} steps, "
                             f"this call asks for {num_inference_steps}")
        spec = self.run_spec(num_inference_steps, guidance_scale, timesteps)
        inputs = {"latents": latents, "text.cond": prompt_embeds}
        if self.do_classifier_free_guidance:
            inputs["text.uncond"] = negative_prompt_embeds

        with forward_hooks(self.transformer):  # offloading hooks: the run stands in for its forwards
            program = self._program(spec, plan, timesteps, tuple(latents.shape))
            if cache is not None:
                units = {n.unit for n in program.graph.nx.nodes if isinstance(n, Unit)}
                cache.begin_run(len(timesteps), len(units))
            with self.progress_bar(total=num_inference_steps) as progress_bar, self._lora_scale(attention_kwargs):
                state = self.make_run_state(program, inputs, timesteps, progress_bar, num_inference_steps,
                                            callback_on_step_end, callback_on_step_end_tensor_inputs)
                latents = program.run(state)
        self._current_timestep = None
        if cache is not None:
            cache.end_run()

        video = latents if output_type == "latent" else self._decode(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)

    def make_run_state(self, program: Program, inputs: dict[str, Any], timesteps: torch.Tensor, progress_bar,
                       num_inference_steps: int, callback: Callable | None, tensor_inputs: list[str]) -> RunState:
        """The runtime environment of one call: step-begin bookkeeping and diffusers' step-end callback."""
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        branch_inputs = {"prompt_embeds": "text.cond", "negative_prompt_embeds": "text.uncond"}

        def step_begin(step: int) -> None:
            self._current_timestep = timesteps[step]

        def step_end(step: int, latents: torch.Tensor) -> StepEnd | None:
            result = None
            if callback is not None:
                values = {"latents": latents, "prompt_embeds": state.inputs["text.cond"],
                          "negative_prompt_embeds": state.inputs.get("text.uncond")}
                outputs = callback(self, step, timesteps[step], {k: values[k] for k in tensor_inputs})
                result = StepEnd(latents=outputs.pop("latents", None))
                for name, key in branch_inputs.items():
                    if name in outputs and key in state.inputs:
                        result.inputs[key] = outputs.pop(name)
            if step == len(timesteps) - 1 or ((step + 1) > num_warmup_steps and (step + 1) % self.scheduler.order == 0):
                progress_bar.update()
            if self.interrupt:
                result = result or StepEnd()
                result.stop = True
            return result

        state = RunState(adapter=self.adapter, scheduler=self.scheduler, timesteps=timesteps, inputs=inputs,
                         expand_timesteps=bool(self.config.expand_timesteps), step_begin=step_begin,
                         step_end=step_end, cache=self.cache)
        return state

    # -- helpers ------------------------------------------------------------------------------
    def _fit_video_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Round frames/height/width to what the VAE and patchify accept, warning as diffusers does."""
        temporal = self.vae_scale_factor_temporal
        if num_frames % temporal != 1:
            logger.warning(f"`num_frames - 1` has to be divisible by {temporal}. Rounding to the nearest number.")
            num_frames = num_frames // temporal * temporal + 1
        num_frames = max(num_frames, 1)
        patch = self.transformer.config.patch_size
        h_mult, w_mult = self.vae_scale_factor_spatial * patch[1], self.vae_scale_factor_spatial * patch[2]
        fit_h, fit_w = height // h_mult * h_mult, width // w_mult * w_mult
        if (fit_h, fit_w) != (height, width):
            logger.warning(f"`height` and `width` must be multiples of ({h_mult}, {w_mult}) for proper "
                           f"patchification. Adjusting ({height}, {width}) -> ({fit_h}, {fit_w}).")
        if fit_h < 1 or fit_w < 1:
            raise ValueError(f"height/width: ({height}, {width}) is smaller than one patch "
                             f"({h_mult}, {w_mult}) of this model")
        return num_frames, fit_h, fit_w

    def _decode(self, latents: torch.Tensor, output_type: str):
        """Undo the VAE latent normalisation, decode, post-process (as diffusers' Wan pipeline)."""
        vae = self.vae
        latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.video_processor.postprocess_video(video, output_type=output_type)

    def _lora_scale(self, attention_kwargs: dict[str, Any] | None):
        """Apply a LoRA `scale` from attention_kwargs around the run, as the model's forward would."""
        from contextlib import contextmanager

        from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

        @contextmanager
        def scaled():
            scale = (attention_kwargs or {}).get("scale", 1.0)
            if USE_PEFT_BACKEND:
                scale_lora_layers(self.transformer, scale)
            try:
                yield
            finally:
                if USE_PEFT_BACKEND:
                    unscale_lora_layers(self.transformer, scale)
        return scaled()


def _realign(module: torch.nn.Module, alignment: int = 64) -> None:
    """Copy parameters and buffers whose storage is not `alignment`-byte aligned."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()
