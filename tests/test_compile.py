"""Compiled plans (`pipe.enable_compile`): the regions of a folded TeaCache plan and of a run-time
FBCache plan as torch.compile graphs — the eager decisions, outputs within a stated tolerance,
and on a second call no graph compiled, no graph break, no recompile (dynamo's counters).

Inductor's compile cost is paid once per region in this module (about 40 s on 2 cores cold).
"""

from __future__ import annotations

import pytest
import torch

import edit
from edit.runtime.compiled import Compiler

SIZE = dict(height=32, width=48, num_frames=9)
STEPS = 6
#: inductor reorders floating point: a compiled region equals the eager one to about 1e-6 here
TOLERANCE = dict(rtol=1e-4, atol=1e-5)

POLICIES = {
    "teacache-folded": ("teacache", dict(rel_l1_thresh=1.0, coefficients=[1.0, 0.0], use_ret_steps=False)),
    "fbcache-run-time": ("fbcache", dict(rel_l1_thresh=0.2)),
}


@pytest.fixture(scope="module", autouse=True)
def one_compile_thread():
    """One inductor compile thread: on 2 cores a pool of compile workers costs more than it saves."""
    from torch._inductor import config

    saved = config.compile_threads
    config.compile_threads = 1
    yield
    config.compile_threads = saved


def generate(pipe, seed: int = 7, prompt: str = "a red fox running through snow"):
    return pipe(prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed), output_type="latent",
                **SIZE).frames


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_compiled_plan_decides_as_the_eager_one_and_compiles_once(name):
    policy, kwargs = POLICIES[name]
    pipe = edit.tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache(policy, **kwargs)
    plan = pipe.compile(STEPS, 5.0, **SIZE)
    assert ("?" in plan.summary()) == (name == "fbcache-run-time")  # folded, or decided at run time
    eager = generate(pipe)
    eager_trace = pipe.cache.stats.trace
    assert any("S" in t for t in eager_trace.values()), eager_trace  # reuse paths are covered
    other = generate(pipe, seed=8, prompt="a blue whale")

    pipe.enable_compile()
    compiled = generate(pipe)
    first = pipe.compile_stats
    assert pipe.cache.stats.trace == eager_trace
    torch.testing.assert_close(compiled, eager, **TOLERANCE)
    assert first.graphs == first.regions >= 4 and first.graph_breaks == 0 and first.recompiles == 0, first

    again = generate(pipe, seed=8, prompt="a blue whale")  # same sizes, another prompt and seed
    second = pipe.compile_stats
    assert (second.graphs, second.graph_breaks, second.recompiles) == (0, 0, 0), second
    assert second.calls == 2 and pipe.cache.stats.compile == second
    torch.testing.assert_close(again, other, **TOLERANCE)

    pipe.disable_compile()
    assert torch.equal(generate(pipe), eager)  # eager again: bit for bit


def test_the_counters_count_recompiles_and_graph_breaks():
    compiler = Compiler()
    add = compiler.function(("add",), lambda a, b: a + b)
    compiler.begin_call()
    add(torch.ones(3), torch.ones(3))
    add(torch.ones(3), torch.ones(3))
    assert (compiler.end_call().graphs, compiler.stats.recompiles) == (1, 0)
    compiler.begin_call()
    add(torch.ones(5), torch.ones(5))  # another shape: a second cache entry of the same region
    assert compiler.end_call().recompiles == 1

    def noisy(x):
        torch._dynamo.graph_break()
        return x + 1
    loose = Compiler(fullgraph=False)
    fn = loose.function(("noisy",), noisy)
    loose.begin_call()
    fn(torch.ones(2))
    assert loose.end_call().graph_breaks >= 1


def test_compile_settings_are_checked_before_any_work():
    pipe = edit.tiny_pipeline()
    with pytest.raises(ValueError, match="mode: expected one of 'default', 'reduce-overhead'"):
        pipe.enable_compile("fastest")
    with pytest.raises(TypeError, match="fullgraph: expected a bool"):
        pipe.enable_compile(fullgraph="yes")
    assert pipe.compile_stats is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (mode='reduce-overhead')")
def test_cuda_graphs_replay_a_folded_plan():
    pipe = edit.tiny_pipeline().to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_cache("teacache", **POLICIES["teacache-folded"][1])

    def run(seed):
        return pipe("a red fox", num_inference_steps=STEPS, generator=torch.Generator("cuda").manual_seed(seed),
                    output_type="latent", **SIZE).frames
    eager, eager_trace = run(7), pipe.cache.stats.trace
    pipe.enable_compile("reduce-overhead")
    run(7)  # records the graphs
    out = run(7)  # replays them: every value read after a replay was copied out of the static buffers
    assert pipe.cache.stats.trace == eager_trace
    torch.testing.assert_close(out, eager, rtol=1e-3, atol=1e-4)
    assert (pipe.compile_stats.recompiles, pipe.compile_stats.graph_breaks) == (0, 0)
