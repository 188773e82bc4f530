"""Minimal generation with EDiT: the embedded tiny Wan model (random weights, so the video is noise by
design), bit-identical to diffusers' WanPipeline with no cache.

    python examples/example.py [--out fox.gif] [--model PATH_OR_HUB_ID]
"""

import argparse

import torch

import edit
from edit import EditWanPipeline


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="fox.gif", help="video file to write (.gif or .mp4)")
    parser.add_argument("--model", default=None, help="a diffusers Wan folder or hub id (default: the tiny model)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    pipe = edit.tiny_pipeline(seed=0) if args.model is None else EditWanPipeline.from_pretrained(args.model)
    size = dict(num_frames=9, height=32, width=48) if args.model is None else dict(num_frames=33, height=480, width=832)
    video = pipe("a red fox running through snow", num_inference_steps=args.steps,
                 generator=torch.Generator().manual_seed(0), **size).frames[0]
    from diffusers.utils import export_to_video
    if args.out.endswith(".gif"):
        from PIL import Image
        frames = [Image.fromarray((f * 255).round().astype("uint8")) for f in video]
        frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=125, loop=0)
    else:
        export_to_video(list(video), args.out, fps=8)
    print(f"wrote {args.out}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]}")


if __name__ == "__main__":
    main()
