"""`edit generate --image IMG [--last-image IMG]`: image to video from the command line."""

from __future__ import annotations

import imageio.v3 as iio
import pytest
from conftest import i2v_components, i2v_images

from edit.cli import main

RUN = ["--steps", "2", "--frames", "9", "--height", "32", "--width", "48"]


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, image in enumerate(i2v_images()):
        paths.append(tmp_path / f"frame{i}.png")
        image.save(paths[-1])
    return paths


def test_generate_from_an_image_and_from_two(tmp_path, capsys, images):
    first, last = images
    videos = []
    for extra in (["--image", str(first)], ["--image", str(first), "--last-image", str(last)],
                  ["--image", str(last)]):
        out = tmp_path / f"v{len(videos)}.gif"
        assert main(["generate", "a red fox", *RUN, *extra, "--out", str(out)]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        videos.append(iio.imread(out))
        assert videos[-1].shape == (9, 32, 48, 3)
    # the images condition the runs: another first frame (or a last one) gives another video
    assert (videos[0] != videos[2]).any() and (videos[0] != videos[1]).any()


def test_an_image_run_caches_and_compares_with_its_uncached_run(tmp_path, capsys, images):
    out = tmp_path / "v.gif"
    assert main(["generate", "a red fox", *RUN[2:], "--steps", "8", "--image", str(images[0]), "--cache", "fbcache",
                 "--threshold", "0.2", "--compare-uncached", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "uncached " in printed and "against the uncached video: psnr" in printed


@pytest.mark.parametrize("argv, message", [
    (["--image", "{missing}"], "--image: cannot read '{missing}' as an image: No such file or directory"),
    (["--image", "{text}"], "--image: cannot read '{text}' as an image: cannot identify image file"),
    (["--image", "{folder}"], "--image: cannot read '{folder}' as an image: Is a directory"),
    (["--image", "{first}", "--last-image", "{text}"], "--last-image: cannot read '{text}' as an image"),
    (["--last-image", "{first}"], "--last-image: needs --image IMG (the first frame)"),
    (["--image", "{first}", "--model", "toy"], "--image: the toy model is text to video only"),
])
def test_bad_images_are_one_line_and_non_zero(tmp_path, capsys, images, argv, message):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    names = {"missing": str(tmp_path / "nope.png"), "text": str(text), "folder": str(tmp_path), "first": str(images[0])}
    out = tmp_path / "x.gif"
    code = main(["generate", "a fox", *RUN, *[a.format(**names) for a in argv], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("edit: error: ") and message.format(**names) in err
    assert len(err.strip().splitlines()) == 1


def test_a_folder_runs_the_task_it_was_saved_for(tmp_path, capsys, images):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from conftest import components

    WanImageToVideoPipeline(**i2v_components("wan2.2")).save_pretrained(tmp_path / "i2v")
    WanPipeline(**components()).save_pretrained(tmp_path / "t2v")
    out = tmp_path / "v.gif"
    assert main(["generate", "a fox", *RUN, "--model", str(tmp_path / "i2v"), "--out", str(out)]) == 2
    assert "is an image-to-video pipeline; give --image IMG" in capsys.readouterr().err
    assert main(["generate", "a fox", *RUN, "--model", str(tmp_path / "t2v"), "--image", str(images[0]),
                 "--out", str(out)]) == 2
    assert "is a text-to-video pipeline; image to video needs" in capsys.readouterr().err
    assert not out.exists()
    assert main(["generate", "a fox", *RUN, "--model", str(tmp_path / "i2v"), "--image", str(images[0]),
                 "--last-image", str(images[1]), "--out", str(out)]) == 0
    assert iio.imread(out).shape == (9, 32, 48, 3)
