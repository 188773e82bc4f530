"""`EditWanPipeline`: diffusers' `WanPipeline` whose denoising loop is a compiled EDiT plan."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from diffusers import WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils import logging
from diffusers.utils.torch_utils import get_module_execution_device

from edit.checks import check_call, check_enable_cache
from edit.graph import Graph, Plan, RunSpec, check_granularity, lower, verify
from edit.graph.plan import residual_bytes
from edit.passes import Pipeline, check_warm_steps, default_pipeline, make_policy
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
        self._plan_options: dict[str, Any] | None = None
        self.pass_records: list = []

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
        return RunSpec(num_steps=len(timesteps), timesteps=[float(t) for t in timesteps],
                       num_blocks=self.adapter.num_blocks, branches=branches, guidance_scale=guidance_scale,
                       generation=self.cache.generation if self.cache else 0)

    def _timesteps(self, num_inference_steps: int, device) -> torch.Tensor:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps

    def plan_pipeline(self, decisions=None, *, fingerprint: dict | None = None, prefetch: bool = True) -> Pipeline:
        """The pass pipeline a call runs: `default_pipeline` from the cache settings (or the
        pipeline given to `enable_cache(pipeline=...)`), with the fold decisions, the reuse window
        and the prefetch cost model's figures bound. `prefetch=False` leaves prefetches out."""
        options = self._plan_options
        if self.cache is None or options is None:
            return default_pipeline()
        if options["pipeline"] is not None:
            return Pipeline.parse(str(options["pipeline"]), policy=self.cache.policy, decisions=decisions) \
                if isinstance(options["pipeline"], str) else _bind(options["pipeline"], decisions)
        return default_pipeline(granularity=options["granularity"], policy=self.cache.policy, fold=options["fold"],
                                decisions=decisions, passes=options["passes"], window=self.cache.reuse_window,
                                prefetch=self._prefetch_setting(fingerprint) if prefetch else None)

    def _prefetch_setting(self, fingerprint: dict | None) -> int | dict | None:
        """What `schedule_prefetch` gets: an explicit lead, or ("auto", or given transfer costs) the
        cost model's figures — the residual's bytes, the slow tier's bandwidth and latency (measured
        once on the store), the previous run's compute time per cell; None without a slow tier."""
        setting = self._plan_options["prefetch"]
        if setting is None or isinstance(setting, int):
            return setting
        from edit.runtime.store.measure import measure_transfer, slowest_tier

        cache = self.cache
        if slowest_tier(cache.store) is None:
            return None
        options, policy = self._plan_options, cache.policy
        certain = (options["fold"] and getattr(policy, "static_signal", False)) or options["passes"] \
            or getattr(policy, "warm_steps", 0)
        if not certain:  # every read is a run-time decision's: "auto" stages none, so measure nothing
            return None
        residual = None if fingerprint is None else residual_bytes(fingerprint)
        if cache.transfer is None:
            cache.transfer = dict(setting) if isinstance(setting, dict) else \
                measure_transfer(cache.store, residual or (1 << 20))
        if cache.transfer is None:
            return None
        unit = cache.last_unit_seconds
        return {"residual_bytes": residual, "bandwidth": float(f"{cache.transfer['bandwidth']:.2g}"),
                "latency": float(f"{cache.transfer.get('latency', 0.0):.2g}"),
                "unit_seconds": None if unit is None else float(f"{unit:.2g}")}

    @property
    def cache_pipeline(self) -> str:
        """The textual form of the pass pipeline plans are compiled with."""
        return str(self.plan_pipeline())

    def build_plan(self, spec: RunSpec, signals=None, fingerprint: dict | None = None, prefetch: bool = True) -> Plan:
        """Lower `spec` and run the plan pipeline (`plan_pipeline`); a static policy is folded when
        `signals` (step -> the adapter's static signals) is given. Verified once at the end (after
        every pass too in debug mode)."""
        cache = self.cache
        decisions = None
        if cache is not None and signals is not None and getattr(cache.policy, "static_signal", False):
            decisions = functools.partial(cache.static_decisions, signals=signals)
        pipeline = self.plan_pipeline(decisions, fingerprint=fingerprint, prefetch=prefetch)
        # folding evaluates the time embedding: the transformer's offloading hooks run around it
        with forward_hooks(self.transformer) if decisions is not None else contextlib.nullcontext():
            graph, self.pass_records = pipeline.run(lower(spec))
        if not pipeline.debug:
            verify(graph)
        return Plan.from_graph(graph, pipeline=str(pipeline), fingerprint=fingerprint, copy=False)

    def pass_report(self) -> str:
        """What each pass of the last compile did (`PassRecord`s, one line each)."""
        return "\n".join(str(r) for r in self.pass_records)

    def compile(self, num_inference_steps: int = 50, guidance_scale: float = 5.0, *, prompt: str | None = None,
                negative_prompt: str | None = None, height: int = 480, width: int = 832, num_frames: int = 81,
                batch_size: int = 1, num_videos_per_prompt: int = 1) -> Plan:
        """The plan a call with these settings runs, for inspection, editing and replay.

        With a static cache policy the plan is folded: the size and batch are needed to compute
        the policy's signals exactly as the run will. No built-in pass reads the prompt, so the
        plan is the same for every prompt.
        """
        spec = self.run_spec(num_inference_steps, guidance_scale)
        num_frames, height, width = self._fit_video_size(num_frames, height, width)
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        shape = self._latent_shape(batch_size * num_videos_per_prompt, num_frames, height, width)
        timesteps = self._timesteps(num_inference_steps, self._execution_device)
        fingerprint = self._fingerprint(spec, shape)  # as a call takes it: outside the offloading hooks
        with forward_hooks(self.transformer):  # folding evaluates the time embedding
            return self.build_plan(spec, self._signals(timesteps, shape), fingerprint)

    def _latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        return (batch, self.transformer.config.in_channels, (num_frames - 1) // self.vae_scale_factor_temporal + 1,
                height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial)

    def _signals(self, timesteps: torch.Tensor, shape: tuple[int, ...]):
        """step -> the adapter's static signals, computed from the weights and the timestep as the run computes them."""
        probe = torch.empty(shape, device=timesteps.device)
        state = RunState(adapter=self.adapter, scheduler=None, timesteps=timesteps, inputs={},
                         expand_timesteps=bool(self.config.expand_timesteps))

        adapter, dtype = self.adapter, self.transformer.dtype

        def signals(step: int):
            with torch.no_grad():
                return adapter.time_signals(state.timestep(step, probe), dtype)
        return signals

    def _fingerprint(self, spec: RunSpec, shape: tuple, version: tuple | None = None) -> dict[str, Any]:
        """What a plan is bound to: the model (class, config, a digest of the weights), the scheduler
        (class, config), dtype, sizes, steps, guidance, and the shape of one residual (`plan.stats()`)."""
        model = self.transformer
        version = weights_version(model) if version is None else version
        if getattr(self, "_digest", (None,))[0] != version:
            self._digest = (version, weights_digest(model))
        config = model.config
        p_t, p_h, p_w = config.patch_size
        tokens = shape[2] // p_t * (shape[3] // p_h) * (shape[4] // p_w)
        return {"model": f"{type(model).__name__}:{_config_digest(model)}", "weights": self._digest[1],
                "scheduler": f"{type(self.scheduler).__name__}:{_config_digest(self.scheduler)}",
                "dtype": str(model.dtype), "latent_shape": tuple(shape), "num_steps": spec.num_steps,
                "timesteps": spec.timesteps, "guidance_scale": spec.guidance_scale, "branches": spec.branches,
                "residual_shape": (shape[0], tokens, config.num_attention_heads * config.attention_head_dim)}

    # -- caching ------------------------------------------------------------------------------
    def enable_cache(self, policy: Any = "teacache", *, num_inference_steps: int | None = None,
                     granularity: str | int = "stack", store: Any = None, fold: bool = True,
                     prefetch: int | str | dict | None = "auto", passes: Sequence[Any] = (),
                     pipeline: Pipeline | str | None = None,
                     **policy_kwargs: Any) -> CacheController:
        """Turn on step caching with `policy` (a registered name, a CachePolicy subclass or instance).

        Plan settings are the parameters of the passes in `edit.passes.default_pipeline`:
        `granularity` ("stack", "per_block" or an int k: units of k blocks), `fold` (evaluate static
        policies such as TeaCache at compile time into a fixed schedule), `passes` (user passes,
        run after the policy is applied and folded, before prefetches are placed), `prefetch`
        (`"auto"`, the default: when the store has a slower tier than device memory, reads that
        certainly happen are staged ahead by a cost model — the residual's bytes over the slow
        tier's bandwidth, measured on the store, against the previous run's time per cell; a dict
        `{"bandwidth": bytes/s, "latency": s}` gives the tier's costs instead; an int k stages every
        read, run-time ones too, k cells ahead; None: no prefetch). `pipeline` (a
        `Pipeline` or its text) replaces the default pipeline. `store`: where residuals live
        (default: a GPUStore on the execution device). Returns `pipe.cache`.
        """
        check_enable_cache(store=store, fold=fold)
        policy = make_policy(policy, **policy_kwargs)
        if isinstance(prefetch, dict):
            bandwidth = prefetch.get("bandwidth")
            if set(prefetch) - {"bandwidth", "latency"} or isinstance(bandwidth, bool) or \
                    not isinstance(bandwidth, (int, float)) or not bandwidth > 0 or \
                    not isinstance(prefetch.get("latency", 0.0), (int, float)) or prefetch.get("latency", 0.0) < 0:
                raise ValueError(f"prefetch: a dict gives the slow tier's costs, {{'bandwidth': bytes/s > 0, "
                                 f"'latency': seconds >= 0}}; got {prefetch!r}")
        elif prefetch != "auto" and prefetch is not None and (isinstance(prefetch, bool) or
                                                              not isinstance(prefetch, int) or prefetch < 1):
            raise ValueError(f"prefetch: expected 'auto', None, a dict of tier costs or an int >= 1 (cells ahead "
                             f"of each read), got {prefetch!r}")
        warm = getattr(policy, "warm_steps", None)
        if warm is not None and num_inference_steps is not None:
            check_warm_steps(warm, num_inference_steps)
        check_granularity(granularity, self.adapter.num_blocks)
        if num_inference_steps is not None and (isinstance(num_inference_steps, bool) or
                                                not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps: expected an int >= 1 or None, got {num_inference_steps!r}")
        passes = tuple(passes)
        for p in passes:
            if not callable(p):
                raise TypeError(f"passes: expected passes (callables Graph -> Graph), got {type(p).__name__}")
        if pipeline is not None:
            if isinstance(pipeline, str):
                Pipeline.parse(pipeline, policy=policy)  # refuse bad text now, not at the first call
            elif not isinstance(pipeline, Pipeline):
                raise TypeError(f"pipeline: expected an edit.passes.Pipeline or its text, got {type(pipeline).__name__}")
        if store is None:
            from edit.runtime.store import GPUStore
            store = GPUStore(device=self._execution_device)
        for method in ("put", "get"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store: expected a CacheStore (put/get), got {type(store).__name__}")
        self.cache = CacheController(policy, store=store)
        self._plan_options = dict(granularity=granularity, fold=bool(fold), prefetch=prefetch, passes=passes,
                                  pipeline=pipeline, num_inference_steps=num_inference_steps)
        self._program_cache = None
        return self.cache

    def disable_cache(self) -> None:
        """Back to the plain no-cache plan (bit-identical to diffusers)."""
        cache, self.cache, self._program_cache, self._plan_options = self.cache, None, None, None
        clear = getattr(cache.store, "clear", None) if cache is not None else None
        try:  # the cache is off whatever the store does
            if callable(clear):
                clear()
        except Exception as err:
            logger.warning(f"disable_cache: the store's clear() failed ({type(err).__name__}: {err}); "
                           "its entries were left in place")

    def _program(self, spec: RunSpec, plan: Graph | None, timesteps: torch.Tensor, shape: tuple,
                 prefetch: bool = True) -> Program:
        version = weights_version(self.transformer)
        fingerprint = self._fingerprint(spec, shape, version)
        if plan is not None:
            self._check_plan(plan, spec, fingerprint)
            return compile_program(plan)
        cache = self.cache
        setting = self._prefetch_setting(fingerprint) if cache is not None and prefetch else None
        key = (spec, tuple(shape), fingerprint["dtype"], version, id(cache), cache and cache.hook_version(),
               cache and cache.reuse_window, repr(setting))
        if self._program_cache is None or self._program_cache[0] != key:
            plan = self.build_plan(spec, self._signals(timesteps, shape), fingerprint, prefetch=prefetch)
            self._program_cache = (key, compile_program(plan, check=False))
        return self._program_cache[1]

    @staticmethod
    def _check_plan(plan: Graph, spec: RunSpec, fingerprint: dict[str, Any]) -> None:
        if not isinstance(plan, Graph):
            raise TypeError(f"plan: expected an edit.graph.Plan (from pipe.compile), got {type(plan).__name__}")
        got = plan.spec
        if got is None:
            raise ValueError("plan: the graph has no RunSpec; build it with pipe.compile or edit.graph.lower")
        if isinstance(plan, Plan):
            problem = plan.mismatch(fingerprint)
            if problem:
                raise ValueError(f"plan: {problem}; compile a plan for this call (pipe.compile)")
        for field in ("num_steps", "branches", "num_blocks", "timesteps", "guidance_scale"):
            if getattr(got, field) != getattr(spec, field):
                raise ValueError(f"plan: {field}: the plan was compiled for {getattr(got, field)!r}, this call has "
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
        reset_cache: bool = True,
        prefetch_reuse: bool = True,
    ) -> WanPipelineOutput | tuple:
        """Generate a video; arguments as `WanPipeline.__call__`, plus `plan` to replay a compiled graph,
        `reset_cache` (False: the cache's policy states and stats go on from the previous call, as a
        segment loop that calls `pipe.cache.reset()` itself wants) and `prefetch_reuse` (False:
        compile the plan without prefetches)."""
        for name, value in (("reset_cache", reset_cache), ("prefetch_reuse", prefetch_reuse)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
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

        # The plan first: its entry prefetches (cross-generation reads of the first cells) then
        # overlap prompt encoding and latent preparation instead of stalling the first step.
        cache = self.cache
        enabled_for = (self._plan_options or {}).get("num_inference_steps")
        if cache is not None and enabled_for not in (None, num_inference_steps):
            raise ValueError(f"num_inference_steps: the cache was enabled for {enabled_for} steps, "
                             f"this call asks for {num_inference_steps}")
        if cache is not None and getattr(cache.policy, "warm_steps", None) is not None:
            check_warm_steps(cache.policy.warm_steps, num_inference_steps)
        shape = tuple(latents.shape) if latents is not None else self._latent_shape(
            batch_size * (num_videos_per_prompt or 1), num_frames, height, width)
        timesteps = self._timesteps(num_inference_steps, device)
        spec = self.run_spec(num_inference_steps, guidance_scale, timesteps)
        program = self._program(spec, plan, timesteps, shape, prefetch=prefetch_reuse)
        if program.has_cells and cache is None:
            raise ValueError("plan: it has cache cells; enable a cache (pipe.enable_cache) to run it")
        if cache is not None and callable(getattr(cache.store, "prefetch", None)):
            for key in program.entry_keys:
                cache.store.prefetch(key)

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
        if tuple(latents.shape) != shape:  # (not expected: the shape is the one prepare_latents makes)
            program = self._program(spec, plan, timesteps, tuple(latents.shape), prefetch=prefetch_reuse)
        inputs = {"latents": latents, "text.cond": prompt_embeds}
        if self.do_classifier_free_guidance:
            inputs["text.uncond"] = negative_prompt_embeds

        with forward_hooks(self.transformer):  # offloading hooks: the run stands in for its forwards
            if cache is not None:
                cache.begin_run(len(timesteps), program.num_units, reset=reset_cache)
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


def weights_version(model: torch.nn.Module) -> tuple[int, int]:
    """(id of the model, the sum of its parameters' version counters): cheap, and it changes when
    the weights are replaced in place (`load_state_dict`, `copy_`) or the model is another object
    (an offloader moving them between devices changes neither, nor their values)."""
    return id(model), sum(p._version for p in model.parameters())


def weights_digest(model: torch.nn.Module, samples: int = 256) -> str:
    """A content digest of the weights that survives processes (plan files): every tensor's name,
    shape and dtype, and `samples` evenly strided values of it. Cheap (a few hundred values per
    tensor, not the gigabytes), and any other checkpoint or fine-tune changes it. Weights an offloader
    keeps on the meta device outside a forward count by name, shape and dtype only."""
    digest = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if tensor.device.type == "meta":  # parked by an offloader outside a forward: no values to read
                continue
            flat = tensor.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float64)
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:16]


def _config_digest(component: Any) -> str:
    config = dict(getattr(component, "config", {}) or {})
    text = json.dumps({k: v for k, v in sorted(config.items()) if not k.startswith("_")}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _bind(pipeline: Pipeline, decisions) -> Pipeline:
    """`pipeline` with `decisions` bound into its fold_static passes."""
    from edit.passes import FoldStatic

    return Pipeline([attrs.evolve(p, decisions=decisions) if isinstance(p, FoldStatic) else p
                     for p in pipeline.passes], debug=pipeline.debug)


def _realign(module: torch.nn.Module, alignment: int = 64) -> None:
    """Copy parameters and buffers whose storage is not `alignment`-byte aligned."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
                tensor.data = tensor.data.clone()
