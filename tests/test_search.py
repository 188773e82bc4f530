"""`edit.search`: reuse-edge costs measured on the exact trajectory, the searched plan, its replay.

The toy-model comparison against the baselines (PSNR at equal computed cells) is issue 20's
benchmark work; here the tiny model checks the mechanics exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import SIZE, components, generate

from edit import EditWanPipeline
from edit.graph import Plan
from edit.passes import Pipeline, Searched, SearchedUnits
from edit.search import edge_error, measure_edges, search

STEPS = 8
PROMPTS = ["a red fox running through snow", "a blue whale in deep water"]


@pytest.fixture(scope="module")
def pipe():
    return EditWanPipeline(**components())


def latents_by_step(pipe, **kwargs) -> list[torch.Tensor]:
    seen = []

    def keep(p, step, t, kw):
        seen.append(kw["latents"])
        return {}
    generate(pipe, num_inference_steps=STEPS, callback_on_step_end=keep, **kwargs)
    return seen


@pytest.mark.parametrize("edge", [(2, 5), (0, 8), (5, 8), (1, 3)])
def test_a_plan_with_one_reuse_edge_has_exactly_the_predicted_error(pipe, edge):
    costs = measure_edges(pipe, PROMPTS[0], num_inference_steps=STEPS, seeds=[7], **SIZE).per_prompt[0]
    i, j = edge
    exact = latents_by_step(pipe)
    with pipe.cache_enabled("none", passes=[Searched([s for s in range(STEPS) if not i < s < j])]):
        reused = latents_by_step(pipe)
        assert pipe.cache.stats.trace[("cond", 0)] == "".join("S" if i < s < j else "C" for s in range(STEPS))
    assert costs[edge] > 0
    assert edge_error(reused[j - 1], exact[j - 1]) == costs[edge]  # the latents where the path rejoins


def test_the_searched_plan_is_the_optimum_and_says_so(pipe):
    result = search(pipe, PROMPTS, budget=0.5, num_inference_steps=STEPS, **SIZE)
    schedule = result.schedule
    assert schedule.budget <= 4 and schedule.computed[0] == 0
    text = result.plan.pipeline
    assert f"searched(computed={list(schedule.computed)}" in text and "edges=[[0, " in text
    assert Pipeline.parse(text).passes[-2] == Searched.of(schedule)  # the record parses back
    rows = result.plan.summary().splitlines()[1:]
    assert [row.split()[1] for row in rows] == ["C" if s in schedule.computed else "S" for s in range(STEPS)]
    # one schedule for both prompts: never better on a prompt than that prompt's own best
    for own, shared in zip(result.per_prompt, result.shared_on_prompt):
        assert own.value <= shared
    assert schedule.value == pytest.approx(sum(result.shared_on_prompt) / 2)


def test_calibration_is_cached_to_a_file(pipe, tmp_path):
    cache = tmp_path / "edges.json"
    first = measure_edges(pipe, PROMPTS, num_inference_steps=4, cache_file=cache, **SIZE)
    again = measure_edges(pipe, PROMPTS, num_inference_steps=4, cache_file=cache, **SIZE)
    assert (first.runs, again.runs) == (2, 0) and again.per_prompt == first.per_prompt
    other = measure_edges(pipe, PROMPTS, num_inference_steps=4, seeds=[5, 6], cache_file=cache, **SIZE)
    assert other.runs == 2 and other.per_prompt != first.per_prompt  # another seed is another calibration


def test_a_searched_plan_replays_in_a_new_process(pipe, tmp_path):
    result = search(pipe, PROMPTS, budget=3, num_inference_steps=STEPS, **SIZE)
    result.plan.save(tmp_path / "plan.json")
    with pipe.cache_enabled("none"):
        expected = generate(pipe, plan=result.plan, num_inference_steps=STEPS)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import components, generate
        from edit import EditWanPipeline
        from edit.graph import Plan
        pipe = EditWanPipeline(**components())
        pipe.enable_cache("none")
        out = generate(pipe, plan=Plan.load({str(tmp_path / 'plan.json')!r}), num_inference_steps={STEPS})
        torch.save(out, {str(tmp_path / 'out.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert "searched(" in Plan.load(tmp_path / "plan.json").pipeline


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(budget=0), ValueError, "budget: expected from 1 to 8 computed steps"),
    (dict(budget=1.5), ValueError, "budget: expected a fraction in \\(0, 1\\]"),
    (dict(budget=0.5, objective="mean"), ValueError, "objective: expected one of"),
    (dict(budget=0.5, over="median"), ValueError, "over: expected 'mean' or 'max'"),
    (dict(budget=0.5, seeds=[1]), ValueError, "seeds: expected one int >= 0 per prompt"),
])
def test_bad_input_is_refused_before_any_run(pipe, kwargs, error, message):
    calls = []
    handle = pipe.transformer.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=message):
            search(pipe, PROMPTS, num_inference_steps=STEPS, **SIZE, **kwargs)
    finally:
        handle.remove()
    assert not calls


def test_the_cli_searches_saves_and_replays(tmp_path, capsys):
    from edit.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox running through snow\n# calibration\n\na blue whale in deep water\n")
    run = ["--model", "tiny", "--steps", "6", "--frames", "9", "--height", "32", "--width", "48"]
    argv = ["search", *run, "--budget", "0.5", "--prompts", str(prompts), "--save", str(tmp_path / "plan.json"),
            "--calibration-cache", str(tmp_path / "cal.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2 uncached calibration runs)" in out and "computes 3 of 6 steps [0," in out
    assert main(argv) == 0 and "(0 uncached calibration runs, read from" in capsys.readouterr().out
    plan = Plan.load(tmp_path / "plan.json")
    assert main(["generate", "a red fox", *run, "--plan-file", str(tmp_path / "plan.json"),
                 "--out", str(tmp_path / "v.gif")]) == 0
    printed = capsys.readouterr().out
    (searched,) = [p for p in Pipeline.parse(plan.pipeline).passes if isinstance(p, Searched)]
    reused = [s for s in range(6) if s not in searched.computed]
    assert reused and f"computed {6 * 2 - 2 * len(reused)}, skipped {2 * len(reused)}" in printed
    assert main(["search", *run, "--budget", "0.5", "--granularity", "2", "--prompts", str(prompts)]) == 0
    assert "computes 6 of 12 cells a branch, per unit:\n  unit 0: [0," in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--prompts", "{missing}"], "--prompts: cannot read"),
    (["--prompts", "{empty}"], "holds no prompt"),
    (["--prompts", "{ok}", "--budget", "half"], "--budget: expected a fraction in (0, 1] or a count"),
    (["--prompts", "{ok}", "--budget", "7"], "--budget: expected from 1 to 6 computed steps"),
    (["--prompts", "{ok}", "--seeds", "1,2,3"], "--seeds: expected 2 seeds >= 0"),
    (["--prompts", "{ok}", "--cache", "teacache"], "--cache: edit search makes its own schedule"),
    (["--prompts", "{ok}", "--save", "{tmp}/plan.txt"], "--save: expected a file ending in .json"),
    (["--prompts", "{ok}", "--granularity", "9"], "--granularity: "),
    (["--prompts", "{ok}", "--granularity", "2", "--budget", "13"], "--budget: expected from 2 to 12 computed cells"),
])
def test_cli_search_refuses_bad_input_in_one_line(tmp_path, capsys, extra, message):
    from edit.cli import main

    (tmp_path / "ok.txt").write_text("a fox\na whale\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    names = {"missing": str(tmp_path / "nope.txt"), "empty": str(tmp_path / "empty.txt"),
             "ok": str(tmp_path / "ok.txt"), "tmp": str(tmp_path)}
    argv = ["search", "--model", "tiny", "--steps", "6", "--budget", "0.5"] + [a.format(**names) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edit: error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_a_unit_reusing_alone_has_exactly_the_predicted_error(pipe):
    costs = measure_edges(pipe, PROMPTS[0], num_inference_steps=STEPS, seeds=[7], granularity=2, **SIZE)
    assert costs.units == 2 and set(costs.per_prompt[0]) == {(u, i, j) for u in range(2) for i in range(STEPS)
                                                             for j in range(i + 1, STEPS + 1)}
    exact = latents_by_step(pipe)
    for unit, (i, j) in [(0, (2, 5)), (1, (1, 6))]:
        schedules = [list(range(STEPS))] * 2
        schedules[unit] = [s for s in range(STEPS) if not i < s < j]
        with pipe.cache_enabled("none", granularity=2, passes=[SearchedUnits(schedules)]):
            reused = latents_by_step(pipe)
            assert pipe.cache.stats.trace[("cond", unit)] == "".join("S" if i < s < j else "C" for s in range(STEPS))
        assert edge_error(reused[j - 1], exact[j - 1]) == costs.per_prompt[0][(unit, i, j)] > 0


def test_a_search_per_unit_spends_the_cells_where_they_matter(pipe):
    result = search(pipe, PROMPTS, budget=0.5, num_inference_steps=STEPS, granularity=2, **SIZE)
    assert len(result.schedule) == 2 and sum(s.budget for s in result.schedule) <= STEPS  # half of 2 x 8 cells
    text = result.plan.pipeline
    assert "searched_units(computed=[[0," in text and Pipeline.parse(text).passes[-2] == SearchedUnits.of(result.schedule)
    grid = [row.split()[1] for row in result.plan.summary().splitlines()[1:]]  # cond's units, a step a row
    assert grid == ["".join("C" if s in sched.computed else "S" for sched in result.schedule) for s in range(STEPS)]
    for own, shared in zip(result.per_prompt, result.shared_on_prompt):
        assert sum(o.value for o in own) <= shared + 1e-15
