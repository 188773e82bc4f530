"""The CLI never loses a file and never says it wrote one it did not: unusable targets are refused
before any work, write failures and Ctrl-C leave a previous file byte-identical and no temp file,
and every refused input is one line naming the flag, before the model loads when no weights are
needed. Subprocess tests are bounded by timeouts."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edit
from edit import cli
from edit.cli import main

SMALL = ["--steps", "1", "--frames", "9", "--height", "32", "--width", "48"]
OLD = b"a video the user already had\n" * 200


def _old_file(path: Path) -> Path:
    path.write_bytes(OLD)
    return path


def _debris(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".edit-")]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the model is loaded: these refusals need no weights."""
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was refused")

    monkeypatch.setattr(cli, "load_pipeline", load)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edit: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--out", "{tmp}/dir.mp4"], "--out: '{tmp}/dir.mp4' is a directory"),
    (["--out", "/proc/x.mp4"], "--out: cannot create files in '/proc': "),
    (["--out", "/sys/x.gif"], "--out: cannot create files in '/sys': "),
    (["--plan", "{tmp}/dir.mp4"], "--plan: expected a file ending in"),
    (["--plan", "{tmp}/plans.svg"], "--plan: '{tmp}/plans.svg' is a directory"),
    (["--plan", "/proc/plan.dot"], "--plan: cannot create files in '/proc': "),
])
def test_unusable_targets_are_refused_before_any_work(tmp_path, capsys, no_loading, argv, message):
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "plans.svg").mkdir()
    old = _old_file(tmp_path / "old.mp4")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["generate", "a fox", *SMALL, *argv] + ([] if "--out" in argv else ["--out", str(old)]))
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in line
    assert old.read_bytes() == OLD and _debris(tmp_path) == []


@pytest.mark.parametrize("argv, message", [
    (["--height", "528"], "--height: 528 gives 33 patch rows, more than this model's RoPE table holds (32, "
                          "rope_max_seq_len); at most 512"),
    (["--frames", "129"], "--frames: 129 gives 33 patch frames, more than this model's RoPE table holds"),
    (["--height", "100000"], "--height: 100000 gives 6250 patch rows"),
    (["--frames", "10"], "--frames: 10 is not 4k+1 (the VAE encodes 1 + 4k frames); try 9 or 13"),
    (["--steps", "100000"], "--steps: 100000 is more than the scheduler's 1000 training timesteps"),
    (["--guidance", "nan"], "--guidance: expected a finite number >= 0"),
    (["--guidance", "inf"], "--guidance: expected a finite number >= 0"),
    (["--guidance", "-5"], "--guidance: expected a finite number >= 0 (<= 1 turns guidance off), got -5"),
    (["--cache", "teacache", "--threshold", "nan"], "--threshold: expected a finite number >= 0"),
    (["--granularity", "2"], "--granularity: needs --cache POLICY"),
    (["--wan-variant", "t2v-1.3B"], "--wan-variant: needs --cache POLICY"),
    (["--seed", str(2 ** 70)], "--seed: expected an integer in [0, 2**64 - 1], got 1180591620717411303424"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 2**64 - 1], got -1"),
    (["--fps", "200"], "--fps: a GIF stores frame times in 1/100 s, so at most 100 fps; got 200"),
])
def test_refused_inputs_name_the_flag_before_loading(tmp_path, capsys, no_loading, argv, message):
    old = _old_file(tmp_path / "old.gif")
    code = main(["generate", "a fox", "--steps", "2", "--frames", "9", "--height", "32", "--width", "48", *argv,
                 "--out", str(old)])
    assert code == 2 and message in _one_line(capsys.readouterr().err)
    assert old.read_bytes() == OLD


def test_a_saved_tiny_model_at_the_default_size_is_refused_from_its_config(tmp_path, capsys, no_loading):
    from conftest import components

    edit.EditWanPipeline(**components()).save_pretrained(tmp_path / "tiny")
    capsys.readouterr()  # save_pretrained's progress bar
    code = main(["generate", "a fox", "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "x.mp4")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "--width: 832 gives 52 patch columns" in line and "at most 512" in line


def test_a_memory_need_above_the_machine_is_refused_with_both_figures(tmp_path, capsys, no_loading, monkeypatch):
    import edit.limits

    monkeypatch.setattr(edit.limits, "machine_bytes", lambda: 1 << 20)  # a 1 MiB machine
    code = main(["generate", "a fox", "--frames", "125", "--height", "512", "--width", "512",
                 "--out", str(tmp_path / "x.mp4")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "--frames/--height/--width: this video needs at least about " in line
    need = float(line.split("about ")[1].split(" GiB")[0])
    assert need >= 0.9  # 125 frames of 512x512 as float32 RGB alone is 0.37 GiB, held in three copies
    assert "more than this machine's 0.0 GiB" in line


def test_every_flag_has_help_and_its_default(capsys):
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    generate = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.values())
    for action in generate._actions:
        if action.dest in ("help",):
            continue
        assert action.help, f"{action.dest} has no help text"
        if action.option_strings:
            assert "(default: " in action.help, f"{action.option_strings[0]} does not state its default"
    assert "(default: a --plan-file plan's, else 30 on the toy, 20 otherwise)" in text and "(default: out.mp4)" in text
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"edit {edit.__version__}"


def test_the_printed_time_separates_loading_from_generation(tmp_path, capsys):
    assert main(["generate", "a fox", *SMALL, "--out", str(tmp_path / "x.gif")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("loaded tiny in ") and lines[1].startswith("generated 9 frames of 48x32 in ")
    assert "loading took" in lines[1] and lines[2] == f"wrote {tmp_path / 'x.gif'}"


def test_the_plan_is_drawn_without_graphviz_as_its_source(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # as on a machine without `dot`
    old = _old_file(tmp_path / "plan.dot")
    assert main(["generate", "a fox", *SMALL, "--plan", str(tmp_path / "plan.svg"), "--out", str(tmp_path / "x.gif")]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'plan.dot'} (the plan, level units)" in captured.out
    assert "graphviz `dot` not found" in captured.err and not (tmp_path / "plan.svg").exists()
    assert old.read_bytes() != OLD and old.read_text().startswith("digraph plan {")
    assert _debris(tmp_path) == []


# -- in a real process: a disk that fills, Ctrl-C, a closed pipe -----------------------------------

def _edit(*argv: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edit", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _small_disk() -> None:
    """A file-size limit stands for a disk that fills up: writes past 1 KiB fail (EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_a_disk_that_fills_while_writing_leaves_the_old_file(tmp_path, suffix):
    old = _old_file(tmp_path / f"fox{suffix}")
    proc = _edit("generate", "a fox", *SMALL, "--out", old.name, cwd=tmp_path, preexec_fn=_small_disk)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "wrote" not in out
    assert _one_line(err).startswith(f"edit: error: --out: cannot write '{old.name}': ")
    assert old.read_bytes() == OLD and _debris(tmp_path) == []


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)


@pytest.mark.parametrize("when", ["loading", "generating", "writing"])
def test_ctrl_c_is_one_line_status_130_and_leaves_the_old_file(tmp_path, when):
    old = _old_file(tmp_path / "fox.gif")
    if when == "loading":  # while torch and diffusers are imported (`import edit` itself loads neither)
        proc = _edit("generate", "a fox", *SMALL, "--out", old.name, cwd=tmp_path)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
    elif when == "generating":  # many steps: the signal lands in the denoising loop
        proc = _edit("generate", "a fox", "--steps", "400", "--frames", "9", "--height", "32", "--width", "48",
                     "--out", old.name, cwd=tmp_path)
        assert proc.stdout.readline().startswith("loaded tiny in ")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
    else:  # a larger GIF: encoding and reading it back take long enough to land in
        for _ in range(4):
            proc = _edit("generate", "a fox", "--steps", "1", "--frames", "17", "--height", "128", "--width", "128",
                         "--out", old.name, cwd=tmp_path)
            _interrupt_when(proc, lambda: any(n.startswith(".edit-part-") for n in os.listdir(tmp_path)))
            out, err = proc.communicate(timeout=60)
            if old.read_bytes() == OLD or proc.returncode not in (0, 130):
                break  # it landed while writing (or went wrong): checked below
            # it landed after the finished video replaced the old one (kept, as it should be), or
            # after the process had ended: nothing to check of writing, so again, on a fresh old file
            assert _debris(tmp_path) == []
            old = _old_file(tmp_path / "fox.gif")
        else:
            pytest.fail("the interrupt never landed while the video was being written (4 tries)")
    if when != "writing":
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "edit: interrupted\n" and "wrote" not in out
    assert old.read_bytes() == OLD and _debris(tmp_path) == []


def test_a_closed_stdout_is_quiet_and_the_video_still_written(tmp_path):
    proc = _edit("generate", "a fox", *SMALL, "--out", "fox.gif", cwd=tmp_path)
    assert proc.stdout.readline().startswith("loaded tiny in ")
    proc.stdout.close()  # as `edit generate ... | head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == ""
    from PIL import Image

    with Image.open(tmp_path / "fox.gif") as image:
        assert image.size == (48, 32)


def test_python_dash_m_edit_runs_the_cli(tmp_path):
    proc = _edit("--version", cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == f"edit {edit.__version__}" and err == ""


def test_a_gif_with_repeated_frames_passes_its_read_back(tmp_path):
    # Pillow merges identical consecutive GIF frames; the check counts by time, so it must still pass.
    import numpy as np

    from edit._output import write_video

    frames = np.random.default_rng(0).integers(0, 256, (9, 16, 24, 3), dtype=np.uint8)
    frames[3] = frames[4] = frames[2]
    write_video(frames, tmp_path / "still.gif", fps=16)
    assert (tmp_path / "still.gif").exists() and _debris(tmp_path) == []
