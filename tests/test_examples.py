"""Every script in examples/ runs (on the embedded tiny model; the toy's runs are in test_toy_model) and does
what it says."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, args: list[str], capsys) -> str:
    module = runpy.run_path(str(EXAMPLES / name), run_name="example")  # defines main() without running it
    module["main"](args)
    return capsys.readouterr().out


def test_every_example_is_tested():
    tested = {"example.py", "wan_t2v_teacache.py", "custom_cache_policy.py", "custom_pass.py", "render_plan.py",
              "edit_plan_json.py", "long_video.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_example(tmp_path, capsys):
    out = run_example("example.py", ["--out", str(tmp_path / "fox.gif"), "--steps", "3", "--model", "tiny"], capsys)
    assert (tmp_path / "fox.gif").stat().st_size > 0 and "9 frames of 48x32" in out


def test_wan_t2v_teacache(capsys):
    out = run_example("wan_t2v_teacache.py", ["--steps", "8", "--model", "tiny"], capsys)
    assert "cond:u0" in out and "S" in out.split("cond:u0")[1].split()[0] and "TeaCache" in out


def test_custom_cache_policy(capsys):
    out = run_example("custom_cache_policy.py", ["--steps", "8", "--threshold", "0.5"], capsys)
    row = out.split("cond:u0")[1].split()[0]
    assert len(row) == 8 and "S" in row and "SSS" not in row  # skips, at most 2 in a row


def test_custom_pass(tmp_path, capsys):
    out = run_example("custom_pass.py", ["--steps", "6", "--out-dir", str(tmp_path)], capsys)
    assert "fora_pass" in out and "FORA pass" in out and "TeaCache" in out
    assert (tmp_path / "fora_plan.dot").exists()


def test_render_plan(tmp_path, capsys):
    out = run_example("render_plan.py", ["--out-dir", str(tmp_path), "--format", "dot"], capsys)
    for level in ("steps", "units", "nodes"):
        assert (tmp_path / f"plan_{level}.dot").read_text().startswith("digraph")
    assert out.count("wrote") >= 3


def test_edit_plan_json(tmp_path, capsys):
    out = run_example("edit_plan_json.py", ["--out-dir", str(tmp_path)], capsys)
    assert (tmp_path / "plan.json").exists() and "cond:u1    CCCSCC" in out


@pytest.fixture(autouse=True)
def _quiet_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["example"])


def test_long_video(tmp_path, capsys):
    out = run_example("long_video.py", ["--segments", "3", "--steps", "6", "--out", str(tmp_path / "long.gif")], capsys)
    assert "segment 2: window [0, 1]" in out and (tmp_path / "long.gif").stat().st_size > 0
    assert "wrote" in out and "25 frames from 3 segments" in out
    import re
    staged = [int(n) for n in re.findall(r"prefetches (\d+)", out)]
    assert staged[0] == 0 and all(n > 0 for n in staged[1:])  # the window's reads are staged from the disk tier
