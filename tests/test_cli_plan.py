"""`edit plan` (compile only: grid, stats, drawing, plan file) and `edit generate --plan-file / --render
--trace / --stats json`."""

from __future__ import annotations

import json
import shutil

import pytest

from edit.cli import main
from edit.graph import Plan

SMALL = ["--steps", "6", "--frames", "9", "--height", "32", "--width", "48"]
FBCACHE = ["--cache", "fbcache", "--threshold", "0.08", "--granularity", "2"]


def test_plan_prints_the_grid_and_stats_and_writes_its_files(tmp_path, capsys):
    saved, drawn = tmp_path / "plan.json", tmp_path / "plan.dot"
    assert main(["plan", "a red fox", *SMALL, *FBCACHE, "--save", str(saved), "--render", str(drawn)]) == 0
    out = capsys.readouterr().out
    assert ("passes: regroup(granularity=2),apply_policy(policy=fbcache(rel_l1_thresh=0.08, warmup_steps=0)),"
            "fold_static,dce") in out
    stats = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert stats["cells"]["total"] == 24 and stats["runtime_cells"] == 20
    assert Plan.load(saved).summary() in out and drawn.read_text().startswith("digraph")


def test_plan_with_a_user_pass_and_no_cache_uses_policy_none(tmp_path, capsys):
    assert main(["plan", "a red fox", *SMALL, "--granularity", "2",
                 "--pass", "set_cells(mode=reuse, steps=[2, 4], units=[1])"]) == 0
    out = capsys.readouterr().out
    assert "apply_policy(policy=none),fold_static,set_cells(mode=reuse, steps=[2, 4], units=[1]),dce" in out
    assert "   2  CS      CS" in out and "   3  CC      CC" in out


def test_generate_replays_a_saved_plan_and_draws_the_run(tmp_path, capsys):
    saved = tmp_path / "plan.json"
    assert main(["plan", "a red fox", *SMALL, *FBCACHE, "--save", str(saved)]) == 0
    capsys.readouterr()
    render = tmp_path / "run.dot"
    assert main(["generate", "a red fox", *SMALL, "--plan-file", str(saved), "--out", str(tmp_path / "fox.gif"),
                 "--render", str(render), "--trace", "--stats", "json"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert stats["computed"] + stats["skipped"] == 24 and stats["skipped"] > 0  # fbcache, from the plan's pipeline
    assert f"wrote {render}" in out and "with the run's decisions" in out and render.read_text().startswith("digraph")


def trace_of(out: str) -> dict[str, str]:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))["trace"]


def test_a_saved_plan_decides_with_its_policy_and_all_its_arguments(tmp_path, capsys):
    """Issue 14: a plan compiled with --threshold 0.3 replays with 0.3 (CSSSSS), not the default 0.1 (CSSSCC)."""
    saved, cache = tmp_path / "p.json", ["--cache", "fbcache", "--threshold", "0.3", "--granularity", "2"]
    assert main(["plan", "a red fox", *SMALL, *cache, "--save", str(saved)]) == 0
    assert "apply_policy(policy=fbcache(rel_l1_thresh=0.3, warmup_steps=0))" in Plan.load(saved).pipeline
    capsys.readouterr()
    assert main(["generate", "a red fox", *SMALL, *cache, "--out", str(tmp_path / "a.gif"), "--stats", "json"]) == 0
    direct = trace_of(capsys.readouterr().out)
    assert main(["generate", "a red fox", *SMALL, "--plan-file", str(saved), "--out", str(tmp_path / "b.gif"),
                 "--stats", "json"]) == 0
    assert trace_of(capsys.readouterr().out) == direct
    assert direct["cond:1"] == "CSSSSS"


@pytest.fixture(scope="module")
def fbcache_plan(tmp_path_factory):
    saved = tmp_path_factory.mktemp("plan") / "p.json"
    assert main(["plan", "a red fox", *SMALL, "--cache", "fbcache", "--threshold", "0.3", "--save", str(saved)]) == 0
    return saved


@pytest.mark.parametrize("flags, flag", [
    (["--cache", "teacache"], "--cache"), (["--threshold", "0.2"], "--threshold"),
    (["--cache", "fbcache", "--threshold", "0.2"], "--threshold"), (["--wan-variant", "t2v-14B"], "--wan-variant"),
])
def test_policy_flags_that_contradict_a_saved_plan_are_refused(fbcache_plan, tmp_path, capsys, flags, flag):
    capsys.readouterr()
    assert main(["generate", "a red fox", *SMALL, "--plan-file", str(fbcache_plan), *flags,
                 "--out", str(tmp_path / "fox.gif")]) == 2
    err = capsys.readouterr().err
    assert err == (f"edit: error: {flag}: the plan decides with fbcache(rel_l1_thresh=0.3, warmup_steps=0); "
                   f"drop {flag} or compile another plan\n")
    assert not (tmp_path / "fox.gif").exists()


@pytest.mark.parametrize("argv, match", [
    (["plan", "x", "--save", "plan.txt"], "--save: expected a file ending in .json"),
    (["plan", "x", "--render", "plan.jpg"], "--render: expected a file ending in"),
    (["plan", "x", "--pass", "teleport"], "--pass: unknown pass 'teleport'"),
    (["plan", "x", "--pass", "set_cells(mode=skip)"], "--pass: set_cells"),
    (["generate", "x", "--trace"], "--trace: needs --render"),
    (["generate", "x", "--plan-file", "/nonexistent/plan.json"], "--plan-file: path: no plan file"),
    (["generate", "x", "--stats", "yaml"], "--stats"),
])
def test_bad_flags_are_one_line_and_status_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edit: error: ") and err.count("\n") == 1 and match in err


def test_a_plan_file_for_another_call_is_refused(tmp_path, capsys):
    saved = tmp_path / "plan.json"
    assert main(["plan", "a red fox", *SMALL, "--save", str(saved)]) == 0
    assert main(["generate", "a red fox", "--steps", "7", "--frames", "9", "--height", "32", "--width", "48",
                 "--plan-file", str(saved), "--out", str(tmp_path / "fox.gif")]) == 2
    assert "--steps: the --plan-file plan was compiled for 6, this call asks for 7" in capsys.readouterr().err
    assert not (tmp_path / "fox.gif").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs the graphviz dot binary to draw an SVG")
def test_render_svg(tmp_path, capsys):
    assert main(["plan", "x", *SMALL, *FBCACHE, "--render", str(tmp_path / "p.svg"), "--level", "steps"]) == 0
    assert (tmp_path / "p.svg").read_bytes().lstrip().startswith((b"<?xml", b"<svg"))
