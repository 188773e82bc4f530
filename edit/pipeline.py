"""`EditWanPipeline`: diffusers' `WanPipeline` whose denoising loop is a compiled EDiT plan.

This module keeps the diffusers face (encode, call, decode); plans are made by one driver,
`edit.passes.compiler.compile_plan`, from frozen inputs this pipeline gathers (`plan_inputs`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch
from diffusers import WanPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from edit import diffusers_face as face
from edit.checks import check_call, check_enable_cache, check_finite, check_int, check_prefetch, check_variant, variant_for
from edit.graph import Graph, Plan, RunSpec, check_granularity
from edit.passes import Pipeline, check_warm_steps, make_policy, pipeline_policy
from edit.passes.compiler import CacheSettings, CostModel, ModelInfo, certain_reads, compile_plan, fingerprint
from edit.runtime import Program, RunState, WanAdapter, compile_program
from edit.runtime.cache import CacheController
from edit.runtime.fingerprint import config_digest, weights_version
from edit.plans import check_plan, measured_costs, own_pipeline, run_policy
from edit.runtime.offload import ExpertHooks


def _one_at_a_time(method: Callable) -> Callable:
    """Calls from several threads run one after another (a pipeline's scheduler, cache and compiled
    plan are state of one run); a call from inside a running call of the same pipeline, in the same
    thread (a step callback calling it again), is refused instead of corrupting that run."""
    @functools.wraps(method)
    def guarded(self, *args: Any, **kwargs: Any) -> Any:
        me = threading.get_ident()
        if getattr(self, "_running_in", None) == me:
            raise RuntimeError(f"{method.__name__}: this pipeline is already running a call in this thread (a "
                               "step callback calling it again?); use another pipeline object for nested runs")
        lock = self.__dict__.setdefault("_call_lock", threading.Lock())
        with lock:
            self._running_in = me
            try:
                return method(self, *args, **kwargs)
            finally:
                self._running_in = None
    return guarded


class EditWanMixin:
    """What EDiT adds to a diffusers Wan pipeline, shared by `EditWanPipeline` (text to video) and
    `EditWanImageToVideoPipeline`: the compiler's inputs, `compile`, the cache, and the run of a
    compiled program. A subclass gives its conditioning (`_conditioning`), the channels of its
    latents (`_latent_channels`) and its `__call__`."""

    _task = "t2v"  # which published TeaCache coefficients fit this pipeline's checkpoints

    def _init_edit(self) -> None:
        self._call_lock = threading.Lock()  # one call at a time (`_one_at_a_time`)
        self._program_cache: tuple[Any, Program, Any] | None = None
        self._fold_hooks = None  # the experts' offloading hooks while a compile folds
        self.cache: CacheController | None = None
        self._settings: CacheSettings | None = None
        self._enabled_steps: int | None = None
        self.pass_records: list = []
        self._parallel = None  # a ParallelRun after enable_parallelism
        self._compiler = None  # a runtime.compiled.Compiler after enable_compile

    def _conditioning(self) -> tuple[str | None, bool]:
        """(`RunSpec.condition`, `RunSpec.image_embeds`) of this pipeline's calls: text only."""
        return None, False

    def _latent_channels(self) -> int:
        """The channels of the latents the scheduler denoises (text to video: the model's input)."""
        return self.transformer.config.in_channels

    def first_frame_mask(self, shape: tuple[int, ...], device: Any = "cpu") -> torch.Tensor | None:
        """Wan2.2 TI2V image to video (`condition="first_frame"`): 0 on the first latent frame (the
        image), 1 elsewhere, as diffusers builds it; None for other runs."""
        if self._conditioning()[0] != "first_frame":
            return None
        mask = torch.ones(1, 1, *shape[2:], dtype=torch.float32, device=device)
        mask[:, :, 0] = 0
        return mask

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, device: str | torch.device | None = None,
                        **kwargs) -> EditWanPipeline:
        """diffusers' `from_pretrained` (hub id or local folder), then `.to(device)` when given.
        Weights that safetensors left at unaligned addresses are copied to aligned storage."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        pipe = pipe.to(device) if device is not None else pipe
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                face.realign(component)
        return pipe

    # -- the compiler's inputs ----------------------------------------------------------------
    @property
    def adapter(self) -> WanAdapter:
        if self.transformer is None:
            raise ValueError("transformer: EditWanPipeline needs a `transformer` component")
        if getattr(self, "_adapter", None) is None or self._adapter.model is not self.transformer:
            self._adapter = self._wrapped(WanAdapter(self.transformer))
        return self._adapter

    @property
    def adapters(self) -> dict[str, WanAdapter]:
        """The adapter of each expert a call runs, by model id: `transformer`, and with a
        `boundary_ratio` (Wan2.2 A14B) `transformer_2`, which then runs the steps whose timestep is
        below `boundary_ratio * num_train_timesteps` (as `WanPipeline` decides)."""
        out = {self.adapter.model_id: self.adapter}
        if self.config.boundary_ratio is not None:
            if getattr(self, "_adapter_2", None) is None or self._adapter_2.model is not self.transformer_2:
                self._adapter_2 = self._wrapped(WanAdapter(self.transformer_2, model_id="transformer_2"))
            out["transformer_2"] = self._adapter_2
        return out

    def _wrapped(self, adapter: WanAdapter) -> Any:
        """`adapter` with its regions compiled (`enable_compile`), on this rank's shard of the
        tokens under sequence parallelism."""
        compiler = getattr(self, "_compiler", None)
        if compiler is not None:
            adapter = compiler.adapter(adapter)
        parallel = getattr(self, "_parallel", None)
        if parallel is None or parallel.sequence == 1:
            return adapter
        from edit.runtime.distributed import ShardedAdapter

        return ShardedAdapter(adapter, parallel)

    # -- compiled plans -----------------------------------------------------------------------
    def enable_compile(self, mode: str = "default", *, fullgraph: bool = True) -> Any:
        """Run plans as compiled regions: the embed, each run of n blocks (with its residual in a
        cell), a reuse's add and the head are each `torch.compile(fullgraph=True)`d once and reused
        at every step and branch (`edit.runtime.compiled`); the first call compiles, later calls of
        the same sizes compile nothing. `mode`: torch.compile's ("reduce-overhead" captures CUDA
        graphs on a GPU). After each call `pipe.compile_stats` (and `pipe.cache.stats.compile`)
        gives the graphs compiled, graph breaks and recompiles. Returns the `Compiler`."""
        from edit.runtime.compiled import Compiler

        if not isinstance(fullgraph, bool):
            raise TypeError(f"fullgraph: expected a bool, got {type(fullgraph).__name__}")
        if self._parallel is not None and self._parallel.sequence > 1:
            raise ValueError("mode: compiled plans do not run sequence-parallel yet (the shards' collectives sit "
                             "inside the regions); use cfg parallelism alone, or no compile")
        self._compiler = Compiler(mode, fullgraph=fullgraph)
        self._adapter = self._adapter_2 = None  # made again, compiled
        self._program_cache = None
        return self._compiler

    def disable_compile(self) -> None:
        """Back to eager regions."""
        self._compiler = None
        self._adapter = self._adapter_2 = None
        self._program_cache = None

    @property
    def compile_stats(self) -> Any:
        """The compile counters of the last call (`CompileStats`; None without `enable_compile`)."""
        return None if self._compiler is None else self._compiler.stats

    # -- several ranks ------------------------------------------------------------------------
    def enable_parallelism(self, cfg: int = 1, sequence: int = 1, *, backend: str | None = None,
                           timeout: float = 60.0) -> Any:
        """Run every call over `cfg * sequence` processes (one per rank; start them with torchrun,
        which this joins, initialising the process group when needed: `gloo` on CPU, `nccl` on
        CUDA, each rank on its own device). `cfg=2`: the cond branch on the ranks of CFG group 0,
        uncond on group 1, one all-gather per step; `sequence=k`: each forward's tokens split over
        k ranks, attention across them through diffusers' Ulysses context parallelism. Every rank
        runs the same plan (compared before each run), decides run-time cells alike (checked), and
        returns the same output; collectives give up after `timeout` seconds. Returns the
        `ParallelRun` (`pipe.parallel`)."""
        from edit.runtime.distributed import setup, shard_attention

        if sequence != 1 and self._compiler is not None:
            raise ValueError("sequence: compiled plans do not run sequence-parallel yet; pipe.disable_compile() first")
        parallel = setup(cfg, sequence, backend=backend, timeout=timeout)
        if parallel.device.type != "cpu":
            self.to(parallel.device)
        if sequence > 1:
            for expert in self._experts().values():
                shard_attention(expert, parallel)
        self._parallel = parallel
        self._adapter = self._adapter_2 = None  # made again, on the shard
        self._program_cache = None
        return parallel

    @property
    def parallel(self) -> Any:
        """The `ParallelRun` of `enable_parallelism` (None: one process)."""
        return self._parallel

    def _placement(self) -> Any:
        from edit.passes import Place

        parallel = self._parallel
        return None if parallel is None else Place(parallel.cfg, parallel.sequence)

    def _experts(self) -> dict[str, torch.nn.Module]:
        """The transformer of each expert a call runs, by model id."""
        return {k: a.model for k, a in self.adapters.items()}

    def step_models(self, timesteps) -> tuple[str, ...]:
        """The model id of each step (() with one expert): `transformer` from the boundary timestep
        up, `transformer_2` below it."""
        if self.config.boundary_ratio is None:
            return ()
        boundary = self.config.boundary_ratio * self.scheduler.config.num_train_timesteps
        return tuple("transformer" if float(t) >= boundary else "transformer_2" for t in timesteps)

    def run_spec(self, num_inference_steps: int, guidance_scale: float, timesteps: torch.Tensor | None = None,
                 latent_shape: tuple[int, ...] | None = None, guidance_scale_2: float | None = None) -> RunSpec:
        """The `RunSpec` of a call with these settings (timesteps from the scheduler if not given).
        With two experts, each step names its expert and its guidance (`guidance_scale_2`, default
        `guidance_scale`, on the second expert's steps)."""
        check_int(num_inference_steps, "num_inference_steps")
        if timesteps is None:
            timesteps = self._timesteps(num_inference_steps, "cpu")
        branches = ("cond", "uncond") if guidance_scale > 1.0 else ("cond",)
        models = self.step_models(timesteps)
        second = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        guidance = tuple(guidance_scale if m == "transformer" else second for m in models)
        return RunSpec(num_steps=len(timesteps), timesteps=[float(t) for t in timesteps],
                       num_blocks=self.adapter.num_blocks, branches=branches, guidance_scale=guidance_scale,
                       generation=self.cache.generation if self.cache else 0, model=self.adapter.model_id,
                       latent_shape=latent_shape, step_models=models, step_guidance=guidance,
                       condition=self._conditioning()[0], image_embeds=self._conditioning()[1])

    def _timesteps(self, num_inference_steps: int, device) -> torch.Tensor:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        return scheduler.timesteps

    @property
    def cache_settings(self) -> CacheSettings | None:
        """The cache settings plans are compiled with (None: no cache). A static policy is decided at
        run time instead of folded while an `after_decision` hook is registered, so the hook sees it."""
        cache, settings = self.cache, self._settings
        if cache is None or settings is None:
            return None
        return attrs.evolve(settings, window=cache.reuse_window, fold=settings.fold and not cache.decision_hooks)

    def model_info(self, shape: tuple[int, ...], timesteps: torch.Tensor, version: tuple | None = None) -> ModelInfo:
        """The transformer as the compiler sees it at this call's latent `shape` (its static signals
        computed from the weights and the timestep exactly as the run computes them). With two
        experts, the second's fingerprint fields join the first's under `transformer_2.`, and each
        step's signals are its own expert's. `version`: the experts' `weights_version`s, in order."""
        adapters = list(self.adapters.values())
        if adapters[1:] and any(a.num_blocks != adapters[0].num_blocks for a in adapters[1:]):
            raise ValueError(f"transformer_2: {adapters[1].num_blocks} blocks, the transformer has "
                             f"{adapters[0].num_blocks}; EditWanPipeline needs experts of one depth")
        fingerprint: dict[str, Any] = {}
        dtypes = {}
        for i, adapter in enumerate(adapters):
            described = adapter.describe(tuple(shape), None if version is None else version[i])
            prefix = "" if i == 0 else f"{adapter.model_id}."
            fingerprint.update({prefix + k: v for k, v in described["fingerprint"].items()})
            if i == 0:
                residual_shape = described["residual_shape"]
            dtypes[adapter.model_id] = adapter.dtype  # diffusers walks the parameters for it: once, not per step
        probe = torch.empty(shape, device=timesteps.device)
        mask = self.first_frame_mask(shape, timesteps.device)
        state = RunState(adapter=self.adapter, scheduler=None, timesteps=timesteps, inputs={},
                         expand_timesteps=bool(self.config.expand_timesteps))
        models = self.step_models(timesteps)
        by_id = self.adapters

        def signals(step: int) -> dict[str, Any]:
            adapter = by_id[models[step]] if models else self.adapter
            if self._fold_hooks is not None:  # inside `_compile`: this expert's offloading hooks
                self._fold_hooks.enter(adapter.model_id)
            with torch.no_grad():
                return adapter.time_signals(state.timestep(step, probe, mask), dtypes[adapter.model_id])
        return ModelInfo(self.adapter.model_id, self.adapter.num_blocks, fingerprint, residual_shape, signals)

    def _call_fingerprint(self, shape: tuple[int, ...]) -> dict[str, Any]:
        out = {"scheduler": f"{type(self.scheduler).__name__}:{config_digest(self.scheduler)}",
               "latent_shape": tuple(shape)}
        placement = self._placement()
        if placement is not None:  # a plan compiled for one layout is refused under another
            out["parallel"] = placement.to_text()
        return out

    def _costs(self, settings: CacheSettings | None, shape: tuple[int, ...]) -> CostModel:
        """`pipe.cache.costs`, with the block time measured once, at the first compile that needs it."""
        if settings is None:
            return CostModel()
        costs = self.cache.costs
        if settings.prefetch == "auto" and costs.bandwidth is not None and costs.block_seconds is None \
                and certain_reads(settings):
            costs = self.cache.costs = attrs.evolve(costs, block_seconds=self.adapter.block_seconds(tuple(shape)))
        return costs

    def plan_inputs(self, spec: RunSpec, shape: tuple[int, ...], timesteps: torch.Tensor, *, prefetch: bool = True,
                    version: tuple | None = None) -> tuple:
        """(spec, model info, settings, costs, call fingerprint): everything `compile_plan` reads."""
        settings = self.cache_settings
        if settings is not None and not prefetch:
            settings = attrs.evolve(settings, prefetch=None)
        return (spec, self.model_info(shape, timesteps, version), settings, self._costs(settings, shape),
                self._call_fingerprint(shape))

    def _compile(self, inputs: tuple) -> Plan:
        spec, info, settings, costs, extra = inputs
        folds = settings is not None and settings.fold and getattr(settings.policy, "static_signal", False)
        # folding evaluates the time embedding: each expert's offloading hooks run around its steps
        # (`model_info`'s signals enter them)
        with ExpertHooks(self._experts()) if folds else contextlib.nullcontext() as hooks:
            self._fold_hooks = hooks
            try:
                plan, self.pass_records = compile_plan(spec, info, settings, costs, extra=extra,
                                                       placement=self._placement())
            finally:
                self._fold_hooks = None
        return plan

    @property
    def cache_pipeline(self) -> str:
        """The textual form of the pass pipeline plans are compiled with."""
        from edit.passes.compiler import plan_pipeline

        settings = self.cache_settings
        model = ModelInfo(self.adapter.model_id, self.adapter.num_blocks, {})
        return str(plan_pipeline(settings, model, self.cache.costs if self.cache else CostModel()))

    def pass_report(self) -> str:
        """What each pass of the last compile did (`PassRecord`s, one line each)."""
        return "\n".join(str(r) for r in self.pass_records)

    @_one_at_a_time
    def compile(self, num_inference_steps: int = 50, guidance_scale: float = 5.0, *, prompt: str | None = None,
                negative_prompt: str | None = None, height: int = 480, width: int = 832, num_frames: int = 81,
                batch_size: int = 1, num_videos_per_prompt: int = 1, guidance_scale_2: float | None = None) -> Plan:
        """The plan a call with these settings runs, for inspection, editing and replay. No built-in
        pass reads the prompt, so the plan is the same for every prompt."""
        num_frames, height, width = face.fit_video_size(self, num_frames, height, width)
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        shape = face.latent_shape(self, batch_size * num_videos_per_prompt, num_frames, height, width)
        spec = self.run_spec(num_inference_steps, guidance_scale, latent_shape=shape, guidance_scale_2=guidance_scale_2)
        return self._compile(self.plan_inputs(spec, shape, self._timesteps(num_inference_steps,
                                                                           self._execution_device)))

    # -- caching ------------------------------------------------------------------------------
    def enable_cache(self, policy: Any = None, *, num_inference_steps: int | None = None,
                     granularity: str | int = "stack", store: Any = None, fold: bool = True,
                     prefetch: int | str | dict | None = "auto", passes: Sequence[Any] = (),
                     pipeline: Pipeline | str | None = None, costs: CostModel | None = None,
                     keep_generations: int | None = None, per_model: dict[str, dict] | None = None,
                     **policy_kwargs: Any) -> CacheController:
        """Turn on step caching with `policy` (a registered name, a CachePolicy subclass or instance;
        default: the policy `pipeline` names, else "teacache").

        Plan settings are the parameters of the passes in `edit.passes.default_pipeline`:
        `granularity` ("stack", "per_block" or an int k: units of k blocks), `fold` (evaluate static
        policies such as TeaCache at compile time into a fixed schedule), `passes` (user passes,
        run after the policy is applied and folded, before prefetches are placed), `prefetch`
        (`"auto"`, the default: when the store has a slower tier than device memory, reads that
        certainly happen are staged ahead by a cost model — the residual's bytes over the slow
        tier's bandwidth, measured here once, against the time of a block, measured at the first
        compile that needs it; `pipe.cache.costs` shows the figures; a dict `{"bandwidth": bytes/s,
        "latency": s, "block_seconds": s}` or `costs=CostModel(...)` gives them instead; an int k
        stages every read, run-time ones too, k cells ahead; None: no prefetch). `pipeline` (a
        `Pipeline` or its text) replaces the default pipeline; its policy, when it names one,
        must be the one enabled. `store`: where residuals live (default: a GPUStore on the
        execution device; one store may serve several pipelines: each cache has its own keys).
        `keep_generations`: after each run, residuals of generations older than the reuse window
        in use are dropped; an int k keeps the k most recent generations instead. `per_model`
        (`{model id: {argument: value}}`, e.g. `{"transformer_2": {"rel_l1_thresh": 0.15}}`): the
        policy's arguments for one expert of a Wan2.2 pipeline, over the ones given for all (a
        `per_model` policy: each expert decided by its own). Returns `pipe.cache`.
        """
        check_enable_cache(store=store, fold=fold)
        if policy is None:
            named = pipeline_policy(pipeline) if isinstance(pipeline, (str, Pipeline)) else None
            policy = named if named is not None and not policy_kwargs else "teacache"
        if isinstance(policy, str) and not {"wan_variant", "coefficients"} & set(policy_kwargs):
            from edit.passes.policies import TeaCache
            from edit.passes.policy import policy_class

            try:
                cls = policy_class(policy)
            except ValueError:  # make_policy below says what is registered
                cls = None
            variant = variant_for(self.transformer, self._task) if cls is not None and issubclass(cls, TeaCache) \
                else None
            if variant is not None:  # coefficients fitted on this architecture beat the default's
                policy_kwargs = {**policy_kwargs, "wan_variant": variant}
        if per_model is not None:
            if not isinstance(policy, str):
                raise TypeError(f"per_model: needs the policy by its registered name (e.g. 'teacache'), "
                                f"got {type(policy).__name__}")
            policy = make_policy("per_model", base=policy, args=policy_kwargs, models=per_model)  # checks its types
            unknown = sorted(set(per_model) - set(self.adapters))
            if unknown:
                raise ValueError(f"per_model: no model {unknown[0]!r} in this pipeline (its models: "
                                 f"{', '.join(self.adapters)})")
        else:
            policy = make_policy(policy, **policy_kwargs)
        costs = check_prefetch(prefetch, costs)
        if num_inference_steps is not None:
            check_int(num_inference_steps, "num_inference_steps", what=" or None")
            if getattr(policy, "warm_steps", None) is not None:
                check_warm_steps(policy.warm_steps, num_inference_steps)
        check_granularity(granularity, self.adapter.num_blocks)
        check_variant(policy, self.transformer)
        passes = tuple(passes)
        for p in passes:
            if not callable(p):
                raise TypeError(f"passes: expected passes (callables Graph -> Graph), got {type(p).__name__}")
        pipeline = own_pipeline(pipeline, policy)
        if store is None:
            from edit.runtime.store import GPUStore
            store = GPUStore(device=self._execution_device)
        for method in ("put", "get"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store: expected a CacheStore (put/get), got {type(store).__name__}")
        settings = CacheSettings(policy, granularity, bool(fold), passes, pipeline,
                                 "auto" if isinstance(prefetch, dict) else prefetch)
        if costs is None:
            costs = measured_costs(store, settings)
        self.cache = CacheController(policy, store=store, costs=costs, keep_generations=keep_generations)
        self._settings, self._enabled_steps, self._program_cache = settings, num_inference_steps, None
        return self.cache

    @contextlib.contextmanager
    def cache_enabled(self, policy: Any = "teacache", **kwargs: Any) -> Iterator[CacheController]:
        """`enable_cache(policy, **kwargs)` for a `with` block; the cache settings before it (or no
        cache) come back after it, with their controller, stats and compiled plan."""
        saved = (self.cache, self._settings, self._enabled_steps, self._program_cache)
        try:
            yield self.enable_cache(policy, **kwargs)
        finally:
            self.cache, self._settings, self._enabled_steps, self._program_cache = saved

    def disable_cache(self) -> None:
        """Back to the plain no-cache plan (bit-identical to diffusers)."""
        cache, self.cache, self._program_cache, self._settings = self.cache, None, None, None
        try:  # the cache is off whatever the store does
            if cache is not None:
                cache.residuals.clear()  # its own entries: another pipeline may share the store
        except Exception as err:
            face.logger.warning(f"disable_cache: the store's clear() failed ({type(err).__name__}: {err}); "
                                "its entries were left in place")

    def _program(self, spec: RunSpec, plan: Graph | None, timesteps: torch.Tensor, shape: tuple,
                 prefetch: bool = True) -> tuple[Program, Any]:
        """The program of this call and the policy that decides its run-time cells."""
        inputs = self.plan_inputs(spec, tuple(shape), timesteps, prefetch=prefetch,
                                  version=tuple(weights_version(m) for m in self._experts().values()))
        group = None if self._parallel is None else self._parallel.group
        if plan is not None:
            placed = getattr(plan, "fingerprint", {}).get("parallel")
            wanted = inputs[4].get("parallel")
            if placed != wanted:
                raise ValueError(f"plan: it was compiled for {placed or 'one process'}, this pipeline runs "
                                 f"{wanted or 'in one process'} (pipe.enable_parallelism); compile the plan here")
            check_plan(plan, spec, fingerprint(*inputs[:2], inputs[4], inputs[2].window if inputs[2] else ()))
            return compile_program(plan, group=group), run_policy(plan, self.cache)
        if self._program_cache is None or self._program_cache[0] != inputs:
            self._program_cache = (inputs, compile_program(self._compile(inputs), check=False, group=group))
        return self._program_cache[1], None

    # -- the call (shared by the text- and image-to-video pipelines) --------------------------
    def _begin_call(self, *, prompt, prompt_embeds, height, width, num_frames, num_inference_steps, guidance_scale,
                    guidance_scale_2, num_videos_per_prompt, max_sequence_length, output_type,
                    attention_kwargs) -> tuple[torch.Tensor, int, int, int, int]:
        """EDiT's checks of a call (after diffusers' `check_inputs`) and the call's state, as
        diffusers sets it; returns (timesteps, num_frames, height, width, batch size)."""
        check_call(self, height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale,
                   num_videos_per_prompt=num_videos_per_prompt, max_sequence_length=max_sequence_length,
                   output_type=output_type)
        timesteps = self._timesteps(check_int(num_inference_steps, "num_inference_steps"), self._execution_device)
        num_frames, height, width = face.fit_video_size(self, num_frames, height, width)
        if guidance_scale_2 is not None:
            check_finite(guidance_scale_2, "guidance_scale_2", " (the second expert's guidance)")
        self._guidance_scale = guidance_scale
        self._guidance_scale_2 = guidance_scale_2
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        batch_size = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) \
            else prompt_embeds.shape[0]
        return timesteps, num_frames, height, width, batch_size

    def _encode_text(self, prompt, negative_prompt, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
                     max_sequence_length) -> dict[str, torch.Tensor]:
        """The run inputs `text.cond` (and `text.uncond` with guidance), in the transformer's dtype."""
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt=prompt, negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, max_sequence_length=max_sequence_length,
            device=self._execution_device)
        dtype = self.transformer.dtype
        inputs = {"text.cond": prompt_embeds.to(dtype)}
        if self.do_classifier_free_guidance:
            inputs["text.uncond"] = negative_prompt_embeds.to(dtype)
        return inputs

    def _run_call(self, program: Program, policy: Any, inputs: dict[str, Any], num_inference_steps: int,
                  callback, tensor_inputs: list[str], reset_cache: bool, attention_kwargs) -> torch.Tensor:
        """Denoise `inputs` (latents, text, conditions) with the program; the final latents."""
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            state = self.make_run_state(program, inputs, timesteps, progress_bar, num_inference_steps,
                                        callback, tensor_inputs)
            return self._denoise(program, policy, state, reset_cache, attention_kwargs)

    def _end_call(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> WanPipelineOutput | tuple:
        video = latents if output_type == "latent" else face.decode(self, latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return WanPipelineOutput(frames=video)

    @staticmethod
    def _check_flags(reset_cache: Any, prefetch_reuse: Any) -> None:
        for name, value in (("reset_cache", reset_cache), ("prefetch_reuse", prefetch_reuse)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")

    def _call_program(self, num_inference_steps: int, guidance_scale: float, timesteps: torch.Tensor,
                      shape: tuple, plan: Graph | None, prefetch: bool,
                      guidance_scale_2: float | None = None) -> tuple[Program, Any]:
        """The call's program and the policy deciding its run-time cells; entry prefetches issued."""
        cache = self.cache
        if cache is not None and self._enabled_steps not in (None, num_inference_steps):
            raise ValueError(f"num_inference_steps: the cache was enabled for {self._enabled_steps} steps, "
                             f"this call asks for {num_inference_steps}")
        if cache is not None and getattr(cache.policy, "warm_steps", None) is not None:
            check_warm_steps(cache.policy.warm_steps, num_inference_steps)
        spec = self.run_spec(num_inference_steps, guidance_scale, timesteps, latent_shape=shape,
                             guidance_scale_2=guidance_scale_2)
        program, policy = self._program(spec, plan, timesteps, shape, prefetch=prefetch)
        if self._parallel is not None:  # every rank runs the same plan, or none runs
            self._parallel.agree_plan(program.graph)
        if program.has_cells and cache is None:
            raise ValueError("plan: it has cache cells; enable a cache (pipe.enable_cache) to run it")
        if cache is not None:
            for key in program.entry_keys:
                cache.residuals.prefetch(key)
        return program, policy

    def _denoise(self, program: Program, policy: Any, state: RunState, reset_cache: bool,
                 attention_kwargs: dict[str, Any] | None) -> torch.Tensor:
        """Run the program: inside the transformer's offloading hooks (the run stands in for its
        forwards) and its LoRA scale, with the cache's run begun and ended around it."""
        cache = self.cache
        experts = self._experts()
        spec = program.graph.spec
        with contextlib.ExitStack() as scope:
            hooks = scope.enter_context(ExpertHooks(experts))
            hooks.enter(spec.model_at(0) if spec is not None else self.adapter.model_id)
            begin = state.step_begin

            def step_begin(step: int) -> None:  # the offloading hooks of the expert this step runs
                if spec is not None:
                    hooks.enter(spec.model_at(step))
                if begin is not None:
                    begin(step)
            state.step_begin = step_begin
            if cache is not None:
                cache.begin_run(len(state.timesteps), program.num_units, reset=reset_cache, policy=policy)
            for expert in experts.values():
                scope.enter_context(face.lora_scale(expert, attention_kwargs))
            parallel = self._parallel
            state.parallel = parallel
            if parallel is not None:
                parallel.bytes_moved = 0
            if parallel is not None and cache is not None:
                scope.enter_context(parallel.reducing())
                scope.callback(setattr, cache, "agree", None)
                cache.agree = parallel.agree_decision if parallel.sequence > 1 else None
                cache.residuals.owner = parallel.shard_owner(cache.residuals.owner)
                parallel.resume_stats(cache.stats)
            compiler = self._compiler
            if compiler is not None:
                compiler.begin_call()
            latents = program.run(state)
            if compiler is not None:
                compiled = compiler.end_call()
                if cache is not None:
                    cache.stats.compile = attrs.evolve(compiled)
        self._current_timestep = None
        if cache is not None:
            cache.end_run()
            if self._parallel is not None:
                self._parallel.gather_stats(cache.stats, program.graph)
        return latents

    def make_run_state(self, program: Program, inputs: dict[str, Any], timesteps: torch.Tensor, progress_bar,
                       num_inference_steps: int, callback: Callable | None, tensor_inputs: list[str]) -> RunState:
        """The runtime environment of one call: step-begin bookkeeping and diffusers' step-end callback."""
        return face.run_state(self, program, inputs, timesteps, progress_bar, num_inference_steps, callback,
                              tensor_inputs)


class EditWanPipeline(EditWanMixin, WanPipeline):
    """A drop-in `WanPipeline`: same components, call signature and outputs.

    `__call__` encodes the prompt (diffusers), compiles the plan (`compile_plan`), executes it with
    the EDiT runtime and decodes with the VAE (diffusers). With no cache the result is bit-for-bit
    identical to `WanPipeline`.

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
        self._init_edit()

    @_one_at_a_time
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
        """Generate a video; arguments as `WanPipeline.__call__`, plus `plan` to replay a compiled graph
        (its run-time cells are decided by the plan's own policy), `reset_cache` (False: the cache's
        policy states and stats go on from the previous call, as a segment loop that calls
        `pipe.cache.reset()` itself wants) and `prefetch_reuse` (False: compile without prefetches)."""
        self._check_flags(reset_cache, prefetch_reuse)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, guidance_scale_2)
        timesteps, num_frames, height, width, batch_size = self._begin_call(
            prompt=prompt, prompt_embeds=prompt_embeds, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
            num_videos_per_prompt=num_videos_per_prompt, max_sequence_length=max_sequence_length,
            output_type=output_type, attention_kwargs=attention_kwargs)

        # The plan first: its entry prefetches (cross-generation reads of the first cells) then
        # overlap prompt encoding and latent preparation instead of stalling the first step.
        shape = tuple(latents.shape) if latents is not None else face.latent_shape(
            self, batch_size * (num_videos_per_prompt or 1), num_frames, height, width)
        program, policy = self._call_program(num_inference_steps, guidance_scale, timesteps, shape, plan,
                                             prefetch_reuse, guidance_scale_2)

        inputs = self._encode_text(prompt, negative_prompt, num_videos_per_prompt, prompt_embeds,
                                   negative_prompt_embeds, max_sequence_length)
        device = self._execution_device
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch_size * num_videos_per_prompt, self.transformer.config.in_channels,
                                       height, width, num_frames, torch.float32, device, generator, latents)
        self.adapter.check_latents(latents)
        latents = self._run_call(program, policy, {"latents": latents, **inputs}, num_inference_steps,
                                 callback_on_step_end, callback_on_step_end_tensor_inputs, reset_cache,
                                 attention_kwargs)
        return self._end_call(latents, output_type, return_dict)
