"""Issue 15, item 5: `edit.metrics` (PSNR/SSIM from torchmetrics, the temporal measure), reading
videos back, and `edit compare A B`."""

from __future__ import annotations

import json
import math
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from edit.cli import main
from edit.metrics import compare, read_video

SHAPE = (5, 16, 24, 3)  # frames, height, width, RGB


def _smooth(seed: int = 0) -> np.ndarray:
    """A float64 video in [0.2, 0.8] that moves: a gradient sliding one pixel per frame."""
    frames, height, width, _ = SHAPE
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(height, width + frames, 3))
    return np.stack([base[:, t:t + width] for t in range(frames)])


def _nchw(video: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video).permute(0, 3, 1, 2)


def _motion_rmse(video: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.diff(video, axis=0) - np.diff(reference, axis=0)) ** 2)))


def test_a_video_with_itself_is_perfect():
    video = _smooth()
    result = compare(video, video)
    assert result["psnr"] == math.inf and result["temporal"] == 0.0 and result["frames"] == 5
    assert result["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result["per_frame"]["psnr"] == [math.inf] * 5
    assert result["per_frame"]["ssim"] == pytest.approx([1.0] * 5, abs=1e-6)
    assert result["per_frame"]["temporal"] == [0.0] * 4


#: torchmetrics scales its natural-log PSNR by 10 / ln(10) taken in float32 even for float64 inputs,
#: so its figures agree with 10 * log10(1 / MSE) to about 1e-7 relative (1e-6 dB), not to float64.
TORCHMETRICS_REL = 1e-7


def test_a_constant_offset_is_20_db_and_leaves_the_motion_alone():
    video = _smooth()
    result = compare(video + 0.1, video)
    assert 10 * math.log10(1 / 0.01) == 20.0
    assert result["psnr"] == pytest.approx(20.0, rel=TORCHMETRICS_REL)
    assert result["per_frame"]["psnr"] == pytest.approx([20.0] * 5, rel=TORCHMETRICS_REL)
    assert result["temporal"] == pytest.approx(0.0, abs=1e-12)


def test_noise_matches_torchmetrics_and_numpy():
    reference = _smooth()
    video = np.clip(reference + np.random.default_rng(1).normal(0, 0.05, reference.shape), 0, 1)
    result = compare(video, reference)
    mse = np.mean((video - reference) ** 2)
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=TORCHMETRICS_REL)
    direct = peak_signal_noise_ratio(_nchw(video), _nchw(reference), data_range=1.0)
    assert result["psnr"] == pytest.approx(float(direct), rel=1e-12)
    frame_mse = np.mean((video - reference) ** 2, axis=(1, 2, 3))
    assert result["per_frame"]["psnr"] == pytest.approx(list(10 * np.log10(1 / frame_mse)), rel=TORCHMETRICS_REL)
    ssim = structural_similarity_index_measure(_nchw(video), _nchw(reference), data_range=1.0)
    assert result["ssim"] == pytest.approx(float(ssim), rel=1e-12) and 0 < result["ssim"] < 1
    assert result["temporal"] == pytest.approx(_motion_rmse(video, reference), rel=1e-12)


def test_a_frozen_video_shows_in_the_temporal_measure():
    moving = _smooth()
    frozen = np.repeat(moving[:1], len(moving), axis=0)
    result = compare(frozen, moving)
    assert result["temporal"] > 0.05
    assert result["temporal"] == pytest.approx(_motion_rmse(frozen, moving), rel=1e-12)
    per_step = np.sqrt(np.mean((np.diff(frozen, axis=0) - np.diff(moving, axis=0)) ** 2, axis=(1, 2, 3)))
    assert result["per_frame"]["temporal"] == pytest.approx(list(per_step), rel=1e-12)
    assert result["per_frame"]["psnr"][0] == math.inf  # frame 0 is the same in both
    assert compare(moving[:1], moving[:1])["temporal"] is None


def test_uint8_and_float_inputs_agree():
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(2))
    as_uint8 = compare(a, torch.from_numpy(b))
    assert compare(torch.from_numpy(a / 255.0), b / 255.0) == as_uint8
    assert compare(a, b / 255.0) == as_uint8  # each argument is converted on its own
    assert compare(torch.from_numpy(a / 255.0).float(), b)["psnr"] == pytest.approx(as_uint8["psnr"], rel=1e-6)


@pytest.mark.parametrize("bad, error, words", [
    ([[0.5]], TypeError, "expected a numpy array or a torch tensor, got list"),
    (np.zeros(SHAPE, dtype=np.int32), TypeError, "expected uint8, float16, float32 or float64 values, got dtype int32"),
    (torch.zeros(SHAPE, dtype=torch.int64), TypeError, "expected uint8 or floating values, got dtype torch.int64"),
    (np.zeros(SHAPE[1:]), ValueError, "expected 4 dims"),
    (np.zeros((1, *SHAPE)), ValueError, "pipe(...).frames[0]"),
    (np.zeros((*SHAPE[:3], 4)), ValueError, "expected 3 channels"),
    (np.zeros((5, 4, 4, 3)), ValueError, "at least 6x6"),
    (np.full(SHAPE, np.nan), ValueError, "non-finite"),
    (np.full(SHAPE, 1.5), ValueError, "must lie in [0, 1], got [1.5, 1.5]"),
])
def test_bad_input_is_refused_naming_the_argument(bad, error, words):
    good = np.zeros(SHAPE)
    with pytest.raises(error, match=r"^video: ") as caught:
        compare(bad, good)
    assert words in str(caught.value)
    with pytest.raises(error, match=r"^reference: "):
        compare(good, bad)


def test_different_shapes_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"video \(5, 16, 24, 3\), reference \(4, 16, 24, 3\)"):
        compare(np.zeros(SHAPE), np.zeros((4, *SHAPE[1:])))


# -- reading videos ----------------------------------------------------------------------------

COLOURS = np.array([[255, 0, 0], [0, 128, 255], [20, 200, 40], [250, 250, 250]], dtype=np.uint8)


def _flat_frames(order) -> np.ndarray:
    """Frames of a few flat colours in blocks, which a GIF palette stores exactly."""
    frames = np.zeros((len(order), 16, 24, 3), dtype=np.uint8)
    for t, first in enumerate(order):
        frames[t, :8] = COLOURS[first % 4]
        frames[t, 8:] = COLOURS[(first + 1) % 4]
    return frames


def _gif(path, frames, ms: int = 62):
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
    return str(path)


def test_a_gif_reads_back_exactly_with_its_repeated_frames(tmp_path):
    frames = _flat_frames([0, 1, 1, 1, 2, 3, 3])
    assert np.array_equal(read_video(_gif(tmp_path / "a.gif", frames)), frames)
    # Pillow stores the repeats once, as longer frames; reading counts them back by duration.
    with Image.open(tmp_path / "a.gif") as image:
        assert image.n_frames == 4
    frozen = _flat_frames([2] * 5)  # all repeats: the durations alone cannot tell
    assert read_video(_gif(tmp_path / "f.gif", frozen)).shape[0] == 1
    assert np.array_equal(read_video(tmp_path / "f.gif", frames=5), frozen)
    with pytest.raises(ValueError, match="are not 3 frames of equal time"):
        read_video(tmp_path / "a.gif", frames=3)


def test_an_mp4_reads_back(tmp_path):
    import imageio.v2 as imageio

    frames = np.repeat(_flat_frames([0, 1, 2, 3, 0]), 2, axis=1)[:, :, :32]  # 32x32: whole macroblocks
    imageio.mimwrite(tmp_path / "a.mp4", list(frames), format="FFMPEG", fps=8, codec="libx264",
                     macro_block_size=1, output_params=["-loglevel", "quiet"])
    video = read_video(tmp_path / "a.mp4")
    assert video.shape == frames.shape and video.dtype == np.uint8
    assert np.abs(video.astype(int) - frames).mean() < 6  # lossy, but close


def _error_of(function, *args):
    try:
        function(*args)
    except Exception as err:  # handed to the test
        return err
    return None


def _within(seconds: float, function, *args):
    """`function(*args)`'s exception, failing if it does not finish in time (a blocking open)."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_error_of(function, *args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{function.__name__}{args} did not return within {seconds} s"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_directory_or_fifo_is_refused_without_blocking(tmp_path):
    folder = tmp_path / "dir.mp4"
    folder.mkdir()
    fifo = tmp_path / "pipe.gif"
    os.mkfifo(fifo)
    for path, kind in ((folder, "a directory"), (fifo, "not a regular file")):
        err = _within(5, read_video, path)
        assert isinstance(err, ValueError) and str(err) == f"cannot read {str(path)!r}: it is {kind}"


def test_unreadable_files_are_refused_naming_the_path(tmp_path):
    (tmp_path / "junk.mp4").write_text("not a video")
    (tmp_path / "junk.gif").write_text("not a video")
    for name in ("junk.mp4", "junk.gif", "missing.gif"):
        with pytest.raises(ValueError, match=f"^cannot read '{tmp_path / name}': "):
            read_video(tmp_path / name)
    with pytest.raises(ValueError, match=r"expected a file ending in \.mp4 or \.gif, got \.png"):
        read_video(tmp_path / "still.png")


# -- edit compare ------------------------------------------------------------------------------

def test_compare_identical_gifs(tmp_path, capsys):
    a = _gif(tmp_path / "a.gif", _flat_frames([0, 1, 2, 3, 0]))
    assert main(["compare", a, a]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "psnr inf dB, ssim 1.0000, temporal 0.0000 (5 frames of 24x16)"
    assert lines[1] == "per-frame psnr (dB): inf inf inf inf inf"


def test_compare_different_gifs(tmp_path, capsys):
    first, second = _flat_frames([0, 1, 2, 3, 0]), _flat_frames([0, 1, 1, 3, 0])
    a, b = _gif(tmp_path / "a.gif", first), _gif(tmp_path / "b.gif", second)
    assert main(["compare", a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = compare(first, second)
    assert lines[0] == (f"psnr {expected['psnr']:.2f} dB, ssim {expected['ssim']:.4f}, "
                        f"temporal {expected['temporal']:.4f} (5 frames of 24x16)")
    assert lines[1].split()[3:] == ["inf", "inf", f"{expected['per_frame']['psnr'][2]:.2f}", "inf", "inf"]


def test_compare_json_is_one_parseable_line(tmp_path, capsys):
    a = _gif(tmp_path / "a.gif", _flat_frames([0, 1, 2, 3, 0]))
    b = _gif(tmp_path / "b.gif", _flat_frames([0, 1, 1, 3, 0]))
    assert main(["compare", a, b, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert set(result) == {"psnr", "ssim", "temporal", "per_frame", "frames"} and result["frames"] == 5
    assert result["per_frame"]["psnr"][0] == "inf" and isinstance(result["per_frame"]["psnr"][2], float)
    assert main(["compare", a, a, "--json"]) == 0
    assert float(json.loads(capsys.readouterr().out)["psnr"]) == math.inf


def test_compare_a_frozen_gif_with_its_moving_reference(tmp_path, capsys):
    moving = _flat_frames([0, 1, 2, 3, 0])
    a = _gif(tmp_path / "frozen.gif", np.repeat(moving[:1], 5, axis=0))  # stored as one frame
    assert main(["compare", a, _gif(tmp_path / "moving.gif", moving), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 5 and result["temporal"] > 0


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compare_a_missing_or_unreadable_file(tmp_path, capsys):
    a = _gif(tmp_path / "a.gif", _flat_frames([0, 1, 2]))
    missing = str(tmp_path / "x.mp4")
    assert main(["compare", missing, a]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"edit: error: A: cannot read {missing!r}: No such file or directory"
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    assert main(["compare", a, str(junk)]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"edit: error: B: cannot read {str(junk)!r}: ")


def test_compare_mismatched_shapes(tmp_path, capsys):
    a = _gif(tmp_path / "a.gif", _flat_frames([0, 1, 2]))
    b = _gif(tmp_path / "b.gif", _flat_frames([0, 1, 2, 3]))
    assert main(["compare", a, b]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "edit: error: B: is 4 frames of 24x16 (4, 16, 24, 3) but A is 3 frames of 24x16 (3, 16, 24, 3); "
        "compare needs the same frames and size")


def test_the_module_docstring_example_runs():
    import doctest

    import edit.metrics

    result = doctest.testmod(edit.metrics, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_importing_edit_leaves_torchmetrics_unloaded():
    import subprocess
    import sys

    code = "import sys, edit; print('torchmetrics' in sys.modules, 'edit.metrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- edit generate --compare-uncached -------------------------------------------------------------

def test_generate_compare_uncached_prints_both_times_and_the_metrics(tmp_path, capsys):
    import re

    from edit.cli import main

    small = ["--steps", "6", "--frames", "5", "--height", "32", "--width", "48", "--out", str(tmp_path / "f.gif")]
    assert main(["generate", "a fox", *small, "--cache", "none", "--compare-uncached"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"uncached [\d.]+ s, cached [\d.]+ s \([\d.]+x\); against the uncached video: "
                        r"psnr inf dB, ssim 1\.0000, temporal 0\.0000", line), line
    assert main(["generate", "a fox", *small, "--cache", "fbcache", "--threshold", "0.3", "--compare-uncached"]) == 0
    psnr = float(re.search(r"psnr ([\d.]+) dB", capsys.readouterr().out.splitlines()[-1]).group(1))
    assert 10 < psnr < 200  # skipping changed the video, a little


def test_compare_uncached_without_a_cache_is_refused(tmp_path, capsys):
    from edit.cli import main

    assert main(["generate", "a fox", "--compare-uncached", "--out", str(tmp_path / "f.gif")]) == 2
    assert capsys.readouterr().err.startswith("edit: error: --compare-uncached: needs --cache POLICY")
