"""`edit generate`: writes a playable video; bad input is one line and a non-zero exit."""

from __future__ import annotations

import shutil

import imageio.v3 as iio
import pytest

from edit.cli import main


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_generate_writes_a_readable_video(tmp_path, capsys, suffix):
    out = tmp_path / f"fox{suffix}"
    code = main(["generate", "a red fox", "--steps", "2", "--frames", "9", "--height", "32", "--width", "48",
                 "--out", str(out)])
    assert code == 0
    frames = iio.imread(out)
    assert frames.shape == (9, 32, 48, 3)
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "step  cond    uncond" in printed


@pytest.mark.skipif(shutil.which("dot") is None, reason="draws an SVG with graphviz's `dot`, not installed here "
                    "(.ci/run installs graphviz; tests/test_cli_safety.py covers --plan without it)")
def test_generate_with_a_cache_prints_stats_and_draws_the_plan(tmp_path, capsys):
    out, plan = tmp_path / "fox.gif", tmp_path / "plan.svg"
    code = main(["generate", "a red fox", "--steps", "8", "--frames", "9", "--height", "32", "--width", "48",
                 "--cache", "fbcache", "--threshold", "0.08", "--granularity", "2", "--plan", str(plan),
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("cache: fbcache(rel_l1_thresh=0.08, warmup_steps=0); passes regroup(granularity=2),"
            "apply_policy(policy=fbcache(rel_l1_thresh=0.08, warmup_steps=0)),fold_static,dce") in printed
    trace = next(line.split()[-1] for line in printed.splitlines() if line.strip().startswith("cond:u0"))
    assert len(trace) == 8 and "S" in trace and trace.startswith("C")  # the run reused some steps
    assert f"wrote {plan}" in printed and plan.with_suffix(".dot").read_text().startswith("digraph plan {")
    assert b"<svg" in plan.read_bytes()
    assert iio.imread(out).shape == (9, 32, 48, 3)


@pytest.mark.parametrize("argv, message", [
    (["--cache", "nope"], "--cache: unknown policy 'nope'; registered: "),
    (["--cache", "teacache", "--threshold", "-1"], "--threshold: expected a finite number >= 0"),
    (["--cache", "teacache", "--granularity", "0"], "--granularity: an int group size must be in [1, 4]"),
    (["--cache", "teacache", "--wan-variant", "t2v-7B"], "--wan-variant: unknown 't2v-7B'"),
    (["--cache", "fbcache", "--wan-variant", "t2v-1.3B"], "--wan-variant: fbcache has no argument 'wan_variant'"),
    (["--threshold", "0.1"], "--threshold: needs --cache POLICY"),
    (["--plan", "plan.jpg"], "--plan: expected a file ending in .dot, .svg, .png, .pdf"),
    (["--level", "blocks"], "--level: expected one of nodes, units, steps"),
    (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["--frames", "x"], "--frames: expected an integer >= 1, got 'x'"),
    (["--height", "50"], "--height: 50 is not a multiple of 16"),
    (["--width", "40"], "--width: 40 is not a multiple of 16"),
    (["--model", "/no/such/model"], "--model: '/no/such/model' is not a pipeline folder"),
    (["--out", "/no/such/dir/out.mp4"], "--out: folder '/no/such/dir' does not exist"),
    (["--out", "video.avi"], "--out: expected a file ending in .mp4 or .gif"),
])
def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys, argv, message):
    code = main(["generate", "a fox", "--steps", "1", "--frames", "5", *argv] +
                ([] if "--out" in argv else ["--out", str(tmp_path / "x.mp4")]))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("edit: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_output_is_rejected(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = main(["generate", "a fox", "--out", str(locked / "out.mp4")])
        err = capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    import os
    if os.geteuid() == 0:  # root writes anywhere: the access check cannot refuse it
        assert code in (0, 2)
    else:
        assert code == 2 and f"--out: cannot create files in '{locked}': Permission denied" in err


def test_console_script_is_installed():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    beside = Path(sys.executable).parent / "edit"  # this environment's script, not another install's
    exe = str(beside) if beside.exists() else shutil.which("edit")
    assert exe, "the `edit` console script is not on PATH"
    done = subprocess.run([exe, "generate", "x", "--steps", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "edit: error: --steps: expected an integer >= 1, got 0"
