"""Minimal generation with EDiT, bit-identical to diffusers' WanPipeline with no cache: by default the
trained toy Wan once its weights are in edit/toy/weights (shapes moving as the caption says, 17
frames of 64x64), else the embedded tiny model.

    python examples/example.py [--out circle.gif] [--model toy|tiny|PATH_OR_HUB_ID] [--steps 30]

`--model tiny` is the embedded random-weight model (its video is noise by design, for exactness tests);
$EDIT_MODEL sets the default, as for the CLI.
"""

import argparse

import torch

import edit
from edit import EditWanPipeline
from edit.toy.model import default_model

SIZES = {"toy": dict(num_frames=17, height=64, width=64), "tiny": dict(num_frames=9, height=32, width=48)}


def load(model: str):
    if model == "toy":
        return edit.toy_pipeline()
    if model == "tiny":
        return edit.tiny_pipeline(seed=0)
    return EditWanPipeline.from_pretrained(model)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="circle.gif", help="video file to write (.gif or .mp4)")
    parser.add_argument("--model", default=default_model(),
                        help="toy, tiny, a diffusers Wan folder or a hub id (default: the toy once trained, else tiny)")
    parser.add_argument("--prompt", default="a big red circle moving left on a dark background")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    pipe = load(args.model)
    size = SIZES.get(args.model, dict(num_frames=33, height=480, width=832))
    video = pipe(args.prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0),
                 **size).frames[0]
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
