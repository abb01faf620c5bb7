"""The command line of unCLIP: text -> image, and the [unCLIP] Sec. 3 edits (variations,
interpolations, text diffs), sampled in micro-batches from a one-file checkpoint or a run folder.

    python unclip.py "a red circle in the top left" --checkpoint runs/toy/unclip.pt --n 8

(`python unclip_cli.py` is the same.) Every flag is checked before anything loads; a user error
prints a message and exits with status 2."""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from diffusion import PRECISIONS
from metrics import save_grid
from prior import DiffusionPrior
from unclip import BATCH, STAGES, UnCLIP, from_stage_checkpoints, load_pipeline, need, to_pil

EXAMPLES = """examples:
  python unclip.py "a red circle in the top left" --checkpoint runs/toy/unclip.pt --n 8
  python unclip.py --variations photo.png --n 6 --out variations.png  # --no-invert: from random x_T
  python unclip.py --interpolate a.png b.png --n 8 --out interpolation.png
  python unclip.py --text-diff a.png "a red circle" "a blue circle" --n 6 --out diff.png
  python unclip.py "a red circle" --n 10000 --stage decoder --out-dir samples/  # every image a PNG
A user error (bad flag value, caption, image or checkpoint) prints a message and exits with status 2."""
GRID = 32  # the grid shows at most this many images of a caption (or an edit), evenly spaced


def read_image(path: str, size: int) -> torch.Tensor:
    """Any readable image -> [1, 3, size, size] in [-1, 1]: RGB, center-cropped, resized (noted)."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if image.mode != "RGB" or image.size != (size, size):  # size: the decoder's
        print(f"note: {path}: mode {image.mode}, {image.width}x{image.height}: center-cropped and resized to "
              f"{size}x{size} as RGB", file=sys.stderr)
    image = ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC)  # center crop, resize
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def progress_printer(total: int):
    """-> (progress, done) printing on stderr: progress(stage, step, steps) about four lines per stage of
    the first micro-batch, with its rate; done(k) after each micro-batch of k images, about ten lines in
    all, with the time spent, per image and left."""
    clock = dict(begin=time.perf_counter(), made=0)
    clock.update(start=clock["begin"], last=clock["begin"])

    def progress(stage, i, n):  # a stage starts at the previous report
        clock.update(start=clock["last"] if i == 1 else clock["start"], last=time.perf_counter())
        if not clock["made"] and (i == n or i % max(1, n // 4) == 0):
            rate = i / max(clock["last"] - clock["start"], 1e-9)
            print(f"{stage} step {i}/{n} {rate:.1f} it/s", file=sys.stderr, flush=True)

    def done(k):
        made, spent = clock["made"] + k, time.perf_counter() - clock["begin"]
        if made == total or made * 10 // total > clock["made"] * 10 // total:
            print(f"{made}/{total} images, {spent:.1f} s ({spent / made:.3f} s per image), about "
                  f"{spent / made * (total - made):.0f} s left", file=sys.stderr, flush=True)
        clock["made"] = made
    return progress, done


def check_args(args) -> None:
    """Every flag that needs no checkpoint, before anything loads: a ValueError naming it."""
    counts = [("--n", args.n), ("--steps", args.steps), ("--prior-steps", args.prior_steps), ("--batch-size",
              args.batch_size), *[("--upsampler-steps", s) for s in args.upsampler_steps or ()]]
    for flag, value in counts:  # a respaced diffusion keeps at least its first and last step
        need(flag, value, {"--n": 2 if args.interpolate else 1, "--batch-size": 1}.get(flag, 2))
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2^63), got {args.seed}")
    if not math.isfinite(args.guidance):
        raise ValueError(f"--guidance must be a finite number, e.g. 3, got {args.guidance}")
    if args.eta is not None and not 0 <= args.eta <= 1:  # NaN fails the comparison too
        raise ValueError(f"--eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {args.eta}")
    if bool(args.captions) == bool(args.variations or args.interpolate or args.text_diff):
        raise ValueError('give a caption, e.g. "a red circle", or one of --variations, --interpolate '
                         "and --text-diff, not both (see --help)")
    if not args.out.lower().endswith(".png"):  # the grid is written as a PNG whatever the name says
        raise ValueError(f"--out must name a .png file, got {args.out}")
    if args.out_dir and os.path.isdir(args.out_dir) and os.listdir(args.out_dir):
        raise ValueError(f"--out-dir {args.out_dir} is not empty: give a new or empty folder")
    if not all(caption.strip() for caption in args.captions + (args.text_diff[1:] if args.text_diff else [])):
        raise ValueError('empty caption: give some text, e.g. "a red circle in the top left"')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sample unCLIP: text -> image and the [unCLIP] Sec. 3 edits",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captions", nargs="*", help="caption(s) to draw, one grid row each")
    p.add_argument("--checkpoint", default="runs/toy/unclip.pt", help="unclip.pt, or a folder of stage files")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--variations", metavar="IMAGE", help="variations of an image (Sec. 3.1)")
    mode.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="A to B (Sec. 3.2)")
    mode.add_argument("--text-diff", nargs=3, metavar=("IMAGE", "OLD", "NEW"), help="IMAGE along z_t(NEW) - "
                      "z_t(OLD), θ from 0 to 0.5 (Sec. 3.3)")
    p.add_argument("--n", type=int, default=8, help="images per caption, or frames (default 8)")
    p.add_argument("--out", default="out.png", help=f"grid PNG, at most {GRID} images per caption or edit")
    p.add_argument("--out-dir", help="also each image as it is made, into a new folder (K_J.png: caption K)")
    p.add_argument("--batch-size", type=int, default=BATCH, help=f"images at once (default {BATCH}): memory "
                   "grows with it, not with --n; the images do not depend on it")
    p.add_argument("--seed", type=int, default=0, help="image j of caption k uses seed + max(10000, n) k + j")
    p.add_argument("--prior-steps", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="decoder steps (default 50)")
    p.add_argument("--upsampler-steps", type=int, nargs="+", help="one value, or one per stage")
    p.add_argument("--guidance", type=float, default=3.0, help="decoder guidance (default 3)")
    p.add_argument("--eta", type=float, help="decoder DDIM η in [0, 1] (default ancestral; variations 1)")
    p.add_argument("--stage", default="all", choices=("all", *STAGES[1:]), help="last stage to run")
    p.add_argument("--embedding", default="prior", choices=("prior", "text", "none"), help="z_i from the "
                   "prior, z_t itself (zero-shot), or none (caption only)")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=True,
                   help="variations and interpolations from the DDIM-inverted x_T (default) or a random one")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the networks' (auto: bf16 on CUDA and on CPUs with native bf16, else fp32)")
    p.add_argument("--strict", action="store_true", help="an over-long caption is an error")
    try:
        run(p.parse_args(argv))
    except (ValueError, OSError) as e:  # user errors: a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def load(args) -> UnCLIP:
    """The pipeline --checkpoint names, on --device, checked against the flags that need it: steps within
    each diffusion's T, captions within the CLIP's context."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    device = {"auto": "cuda" if cuda else "mps" if mps else "cpu"}.get(args.device, args.device)
    if not {"cpu": True, "cuda": cuda, "mps": mps}[device]:
        raise ValueError(f"--device {device} is not available here; use cpu or auto")
    opener = from_stage_checkpoints if os.path.isdir(args.checkpoint) else load_pipeline
    pipe, steps = opener(args.checkpoint, device), args.upsampler_steps or []
    if len(steps) not in (0, 1, len(pipe.upsamplers)):
        raise ValueError(f"--upsampler-steps takes one value, or one per upsampler (this checkpoint has "
                         f"{len(pipe.upsamplers)}), got {len(steps)}")
    per_stage = steps * len(pipe.upsamplers) if len(steps) == 1 else steps  # one value: every upsampler
    limits = [("--steps", args.steps, pipe.decoder)] + [
        ("--upsampler-steps", s, up) for s, up in zip(per_stage, pipe.upsamplers, strict=False)]
    if isinstance(pipe.prior, DiffusionPrior):  # the AR prior takes no steps
        limits.append(("--prior-steps", args.prior_steps, pipe.prior))
    for flag, value, m in limits:
        if value > m.cfg.timesteps:
            raise ValueError(f"{flag} must be at most {m.cfg.timesteps}, this checkpoint's T, got {value}")
    tokenizer = pipe.clip.tokenizer
    for caption in args.captions + (args.text_diff[1:] if args.text_diff else []):
        needed, L = len(tokenizer.encode(caption)) + 2, tokenizer.context_length
        if needed > L:  # (start and end tokens count) truncated: a warning, or with --strict an error
            message = f"caption {caption[:30]!r}... needs {needed} tokens, over the context length {L}"
            if args.strict:
                raise ValueError(f"{message}; shorten it (without --strict it is truncated)")
            print(f"warning: {message}; only its first {L - 2} tokens are used", file=sys.stderr)
    return pipe


def run(args) -> None:
    """Sample as the flags say: each image to --out-dir as its micro-batch arrives, then the grid."""
    check_args(args)
    pipe, n, steps = load(args), args.n, args.upsampler_steps
    progress, done = progress_printer(n * max(1, len(args.captions)))
    options = dict(seed=args.seed, decoder_steps=args.steps, decoder_guidance=args.guidance,
                   upsampler_steps=steps[0] if steps and len(steps) == 1 else steps, stages=args.stage,
                   progress=progress, batch_size=args.batch_size, stream=True, precision=args.precision)
    read = lambda path: read_image(path, pipe.image_size)
    shown = [read(args.variations or args.text_diff[0])] if args.variations or args.text_diff else []
    thetas = torch.linspace(0, 0.5 if args.text_diff else 1, n).tolist()
    if args.variations:
        eta = 1.0 if args.eta is None else args.eta
        batches = pipe.variations(shown[0], n, eta, invert=args.invert, **options)
    elif args.interpolate:
        batches = pipe.interpolate(*map(read, args.interpolate), n, invert=args.invert, **options)
    elif args.text_diff:
        batches = pipe.text_diff(shown[0], *args.text_diff[1:], thetas, **options)
    else:
        batches = pipe.generate(args.captions, n, prior_steps=args.prior_steps, eta=args.eta,
                                embedding=args.embedding, **options)
    keep = set(torch.linspace(0, n - 1, min(n, GRID)).round().long().tolist())  # the grid's columns
    os.makedirs(args.out_dir or ".", exist_ok=True)
    tiles, labels, row = [], [], 0
    for images in (out["images"][-1].cpu() for out in batches):
        for image in images:  # only the grid's images stay in memory
            (k, j), name = divmod(row, n), f"{row // n}_{row % n}.png" if args.captions else f"{row}.png"
            if args.out_dir:
                to_pil(image[None])[0].save(os.path.join(args.out_dir, name))
            if j in keep:
                labels.append((args.captions[k] if j == 0 else "") if args.captions else
                              f"variation {j + 1}" if args.variations else f"theta {thetas[j]:.2f}")
                tiles.append(image)
            row += 1
        done(len(images))
    tiles = [F.interpolate(x, size=tiles[-1].shape[-2:])[0] for x in shown] + tiles
    save_grid(tiles, ["input"] * len(shown) + labels, args.out, ncol=len(tiles) if shown else len(keep))
    kept = f"; all in {args.out_dir}" if args.out_dir else ""
    print(f"wrote {args.out}: {len(labels)} of {row} images{kept}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
