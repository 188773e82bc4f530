"""Issue 19, the command line's last findings: a Ctrl-C as the video is finalised, a long run that
says so before it starts, and drawings that stay readable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import edit.cli as cli
from edit.cli import main

SMALL = ("--steps", "2", "--frames", "5", "--height", "32", "--width", "48")


# -- a Ctrl-C at the very end ------------------------------------------------------------------

LAUNCH = [sys.executable, "-m", "edit"]


@pytest.mark.parametrize("suffix, delays", [(".gif", (0.0, 0.003)), (".mp4", (0.001,))])
def test_ctrl_c_as_the_video_is_finalised_is_status_130_or_0_and_never_a_traceback(tmp_path, suffix, delays):
    # The signal is sent just after the finished file appears: it lands in the report, or in the
    # interpreter's teardown, where Python used to print "Exception ignored in ..." and exit 0.
    outcomes = []
    for delay in delays:
        out = tmp_path / f"fox{delay}{suffix}"
        proc = subprocess.Popen([*LAUNCH, "generate", "a fox", *SMALL, "--out", out.name],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not out.exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert (proc.returncode, stderr) in ((0, ""), (130, "edit: interrupted\n")), (proc.returncode, stderr)
        assert out.stat().st_size > 0 and not [n for n in os.listdir(tmp_path) if n.startswith(".edit-")]
        outcomes.append(proc.returncode)
    assert set(outcomes) <= {0, 130}


def test_the_process_entry_points_are_run():
    # `edit` and `python -m edit` both go through `run`, whose exit skips the teardown.
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "edit"]
    assert script.value == "edit.cli:run"
    source = open(os.path.join(os.path.dirname(cli.__file__), "__main__.py")).read()
    assert "run()" in source


# -- a long run says so --------------------------------------------------------------------------

def test_the_issue_s_long_run_is_estimated_long_and_a_default_run_short():
    import edit
    from edit.estimate import estimate_run

    pipe = edit.tiny_pipeline(seed=0)
    long = estimate_run(pipe, pipe.compile(num_inference_steps=1, num_frames=125, height=512, width=512))
    short = estimate_run(pipe, pipe.compile(num_inference_steps=2, num_frames=5, height=32, width=48))
    assert long.tokens == 32 * 32 * 32 and long.forwards == 2
    assert long.seconds >= cli.LONG_RUN_SECONDS > short.seconds
    assert long.decode_seconds > 100 * short.decode_seconds  # scaled by the pixels to decode
    assert "32768 tokens per forward, 2 forwards" in long.describe()


def test_a_long_run_prints_its_tokens_and_estimate_before_the_first_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "LONG_RUN_SECONDS", 0.0)  # every run is long
    marks = []
    import edit.pipeline

    original = edit.pipeline.EditWanPipeline._denoise

    def denoise(self, *args, **kwargs):
        marks.append(capsys.readouterr())  # what was printed before the first step ran
        return original(self, *args, **kwargs)
    monkeypatch.setattr(edit.pipeline.EditWanPipeline, "_denoise", denoise)
    assert main(["generate", "a fox", *SMALL, "--out", str(tmp_path / "fox.gif")]) == 0
    after = capsys.readouterr()
    (before,) = marks
    assert "a long run: 12 tokens per forward, 4 forwards: about " in before.out
    assert "0/2" in before.err  # the progress bar shows from the start
    assert "2/2" in after.err and "decoding 5 frames of 48x32 (about " in after.out
    assert after.out.index("decoding") < after.out.index("wrote")


def test_a_short_run_prints_no_estimate_and_no_bar(tmp_path, capsys):
    assert main(["generate", "a fox", *SMALL, "--out", str(tmp_path / "fox.gif")]) == 0
    captured = capsys.readouterr()
    assert "a long run" not in captured.out and "decoding" not in captured.out and captured.err == ""


# -- drawings that stay readable ---------------------------------------------------------------

def _drawn_steps(path) -> list[int]:
    import re

    return sorted({int(m) for m in re.findall(r"label=\"step (\d+) ·", path.read_text())})


def test_a_long_plan_draws_five_steps_by_default_and_says_which(tmp_path, capsys):
    assert main(["plan", "a fox", "--render", str(tmp_path / "p.dot")]) == 0
    err = capsys.readouterr().err
    assert _drawn_steps(tmp_path / "p.dot") == [0, 5, 10, 14, 19]
    assert "drew steps 0, 5, 10, 14, 19 of 20 at level units (--render-steps all" in err
    assert main(["plan", "a fox", "--steps", "6", "--render", str(tmp_path / "q.dot")]) == 0
    assert _drawn_steps(tmp_path / "q.dot") == list(range(6)) and "drew steps" not in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("0:3", [0, 1, 2]), ("2:9:3", [2, 5, 8]), ("17:", [17, 18, 19]),
                                            ("4,1", [1, 4]), ("all", list(range(20)))])
def test_render_steps_picks_the_steps_drawn(tmp_path, capsys, text, expected):
    assert main(["plan", "a fox", "--render", str(tmp_path / "p.dot"), "--render-steps", text]) == 0
    assert _drawn_steps(tmp_path / "p.dot") == expected and "drew steps" not in capsys.readouterr().err


def test_generate_draws_the_chosen_steps_of_its_run(tmp_path, capsys):
    assert main(["generate", "a fox", "--steps", "8", "--frames", "5", "--height", "32", "--width", "48",
                 "--out", str(tmp_path / "f.gif"), "--render", str(tmp_path / "r.dot"), "--plan",
                 str(tmp_path / "p.dot"), "--render-steps", "6:"]) == 0
    assert _drawn_steps(tmp_path / "r.dot") == _drawn_steps(tmp_path / "p.dot") == [6, 7]


@pytest.mark.parametrize("argv, expected", [
    (["--render-steps", "0:2"], "--render-steps: needs a drawing to choose steps of (--render FILE)"),
    (["--render", "p.dot", "--render-steps", "x"], "--render-steps: expected A:B, A:B:STEP, a list such as 0,5,10, "
                                                   "or all; got 'x'"),
    (["--render", "p.dot", "--render-steps", "30:"], "--render-steps: '30:' runs past this run's steps 0..19"),
    (["--render", "p.dot", "--render-steps", "0,20"], "--render-steps: step 20 is not in this run (steps 0..19)"),
    (["--render", "p.dot", "--render-steps", "5:5"], "--render-steps: '5:5' selects no step of this run's 0..19"),
    (["--render", "p.dot", "--render-steps", "0:9:0"], "--render-steps: the step of '0:9:0' must be >= 1"),
])
def test_a_bad_render_steps_is_one_line_before_loading(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: pytest.fail("the model was loaded"))
    assert main(["plan", "a fox", *argv]) == 2
    assert capsys.readouterr().err == f"edit: error: {expected}\n"
    assert not (tmp_path / "p.dot").exists()
