"""unCLIP [unCLIP]: the whole system of the paper, its applications, one-file checkpoints, a CLI.

A frozen CLIP reads the caption y into z_t; a prior P(z_i | y) proposes a CLIP image embedding z_i
(both unit-norm, [B, D]); the decoder P(x | z_i, y) draws an S x S image from noise x_T; zero, one
or two upsamplers enlarge it to 2S, 4S ([unCLIP] Fig. 2). Stages: "prior", "decoder", "up1", "up2".
This file only composes the modules below it: the math lives there.
"""

import argparse
import os
import sys
import time
from dataclasses import asdict
from itertools import count

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from clip_frozen import CLIP, ByteTokenizer, CLIPConfig, FrozenCLIP
from decoder import Decoder, DecoderConfig
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from toy_data import save_grid
from upsample import Upsampler, UpsamplerConfig

FORMAT = 1  # layout version of the one-file checkpoint; bump it when the layout changes
HINT = "train one with: python train_toy.py"
STAGES = ("prior", "decoder", "up1", "up2")
PRIORS = {"diffusion": (DiffusionPrior, DiffusionPriorConfig), "ar": (ARPrior, ARPriorConfig)}


def slerp(a: torch.Tensor, b: torch.Tensor, theta) -> torch.Tensor:
    """Spherical interpolation row by row ([unCLIP] Sec. 3.2, Shoemake 1985): a, b [B, ...] or [D],
    θ a float or [K] -> sin((1-θ)Ω)/sin Ω · a + sin(θΩ)/sin Ω · b with cos Ω = â·b̂. Where sin Ω ≈ 0
    (parallel or anti-parallel vectors) it is lerp, the parallel limit."""
    if a.dim() == 1:  # one vector [D]: a row of one
        out = slerp(a[None], b[None], theta)
        return out[0] if torch.as_tensor(theta).dim() == 0 else out
    a2, b2 = a.flatten(1).double(), b.flatten(1).double()  # [B, N]; float64 keeps acos accurate
    theta = torch.as_tensor(theta, dtype=torch.float64, device=a.device).reshape(-1, 1)  # [K, 1]
    cos = (F.normalize(a2, dim=1) * F.normalize(b2, dim=1)).sum(1, keepdim=True)  # [B, 1]
    omega = torch.acos(cos.clamp(-1, 1))
    parallel = torch.sin(omega).abs() < 1e-7
    sin = torch.sin(omega).masked_fill(parallel, 1)
    w_a = torch.where(parallel, 1 - theta, torch.sin((1 - theta) * omega) / sin)
    w_b = torch.where(parallel, theta, torch.sin(theta * omega) / sin)
    return (w_a * a2 + w_b * b2).to(a.dtype).reshape(-1, *a.shape[1:])


def to_pil(images: torch.Tensor) -> list:
    """[B, 3, H, W] in [-1, 1] (e.g. generate(...)["images"][-1]) -> B RGB PIL images, 8 bits."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


class UnCLIP:
    """clip: FrozenCLIP; prior: DiffusionPrior, ARPrior or None (then only the prior-free baselines and
    the image applications run); decoder: Decoder; upsamplers: 0-2, each fed the previous size."""

    def __init__(self, clip: FrozenCLIP, prior, decoder: Decoder, upsamplers=()):
        self.clip, self.prior, self.decoder, self.upsamplers = clip, prior, decoder, list(upsamplers)
        self.image_size = size = decoder.cfg.image_size  # S
        for i, up in enumerate(self.upsamplers):
            if up.cfg.low_res != size:
                raise ValueError(f"up{i + 1} takes {up.cfg.low_res}x{up.cfg.low_res} images but the "
                                 f"stage before it makes {size}x{size}; {HINT}")
            size = up.cfg.high_res
        for m in (prior, decoder):
            if m is not None and m.cfg.clip_dim != clip.embed_dim:
                raise ValueError(f"{type(m).__name__} expects z_i of size {m.cfg.clip_dim}, the "
                                 f"CLIP makes {clip.embed_dim}: stages of different runs; {HINT}")
        self.models = [m.eval() for m in (prior, decoder, *self.upsamplers) if m is not None]
        self.stages = [s for s in STAGES[:2 + len(self.upsamplers)] if s != "prior" or prior is not None]

    def to(self, device) -> "UnCLIP":
        for m in (self.clip, *self.models):
            m.to(device)
        return self

    def _last(self, stages: str) -> int:
        """'all' or a stage name -> the index in STAGES of the last stage to run."""
        if stages not in ("all", *STAGES):
            raise ValueError(f"stages must be 'all' or one of {STAGES}, got {stages!r}")
        if stages.startswith("up") and stages not in self.stages:
            raise ValueError(f"stage {stages!r} needs an upsampler this pipeline lacks (it has "
                             f"{', '.join(self.stages)}); {HINT}")
        return STAGES.index(self.stages[-1] if stages == "all" else stages)

    def _sample_prior(self, z_t, states, mask, steps, guidance, candidates, generators, progress):
        """z_i [n, D], row r drawn with generators[r]; a forward hook reports each network call."""
        ar, calls = isinstance(self.prior, ARPrior), count(1)
        total = self.prior.cfg.pca_dims + 1 if ar else steps  # network calls for one row

        def tick(*_):  # returns None: a forward hook's return value would replace the output
            if progress:
                progress("prior", min(next(calls), total), total)

        hook = self.prior.register_forward_hook(tick)
        try:
            if not ar:  # the k candidates of row r draw from generators[r] one after the other
                gens = [g for g in generators for _ in range(candidates)]
                return self.prior.sample(z_t, states, mask, steps=steps, guidance_scale=guidance,
                                         candidates=candidates, generator=gens)
            # token by token, a batch draws from one generator: one row at a time
            return torch.cat([self.prior.sample(z_t[r:r + 1], states[r:r + 1], mask[r:r + 1],
                                                guidance_scale=guidance, candidates=candidates,
                                                generator=g) for r, g in enumerate(generators)])
        finally:
            hook.remove()

    def _decode(self, z_i, generator, noise=None, eta=None, tokens=None, mask=None,
                fixed_noise=False, decoder_steps=50, decoder_guidance=3.0, upsampler_steps=None,
                stages="all", progress=None) -> dict:
        """z_i [n, D] (or None, with tokens) -> generate's dict, up to `stages`.
        fixed_noise: one upsampler x_T shared by the n rows (frames of an edit)."""
        last, out = self._last(stages), {"z_i": z_i}
        ups = self.upsamplers[:max(0, last - 1)]
        steps = upsampler_steps if isinstance(upsampler_steps, list | tuple) else [upsampler_steps] * len(ups)
        if len(steps) < len(ups):
            raise ValueError(f"upsampler_steps={upsampler_steps}: need one per upsampler")
        report = lambda stage: (lambda i, k: progress(stage, i, k)) if progress else None  # for a sampler
        if last > 0:
            x = out["decoder"] = self.decoder.sample(
                z_i, tokens, mask, steps=decoder_steps, guidance_scale=decoder_guidance, eta=eta,
                noise=noise, generator=generator, progress=report("decoder")).clamp(-1, 1)
        for i, up in enumerate(ups):
            shape = (1, 3, up.cfg.high_res, up.cfg.high_res)  # fixed_noise: one x_T for all rows
            x_T = torch.randn(shape, generator=generator).expand(len(x), -1, -1, -1) if fixed_noise else None
            x = out[f"up{i + 1}"] = up.sample(x, steps=steps[i], noise=x_T,
                                              generator=generator, progress=report(f"up{i + 1}"))
        out["images"] = [out[s] for s in STAGES[1:] if s in out]
        return out

    @torch.no_grad()
    def generate(self, captions, images_per_caption=1, seed=0, prior_steps=64, prior_guidance=1.0,
                 candidates=2, decoder_steps=50, decoder_guidance=3.0, eta=None,
                 upsampler_steps=None, stages="all", embedding="prior", progress=None) -> dict:
        """Text -> images [unCLIP] Sec. 2: z_i ~ prior(y), x ~ decoder(z_i, y), then upsamplers.
        Returns {"z_i": [B n, D], "decoder": [B n, 3, S, S], "up1", "up2", "images": the image
        tensors in cascade order} up to `stages` ("all" or a stage), rows k n ... k n + n - 1 for
        caption k. eta: the decoder's sampler (None ancestral, float DDIM); upsampler_steps: None
        (each config's own), an int, or one per upsampler. embedding: "prior", or a prior-free
        baseline of [unCLIP] Sec. 5.1: "text" decodes z_t as if it were z_i (zero-shot), "none"
        the caption alone (the decoder's null z_i). progress(stage, step, steps) follows each step."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if embedding not in ("prior", "text", "none"):
            raise ValueError(f"embedding must be 'prior', 'text' or 'none', got {embedding!r}")
        if embedding == "prior" and self.prior is None:
            raise ValueError(f"this pipeline has no prior (it has {', '.join(self.stages)}); use "
                             f"embedding 'text' or 'none', or {HINT}")
        self._last(stages)  # a bad stage fails before any sampling
        z_t, states, mask = self.clip.encode_text(captions)
        tokens = self.clip.tokenize(captions)[0]
        n = images_per_caption  # caption k fills rows k n ... k n + n - 1
        z_t, states, mask, tokens = (v.repeat_interleave(n, 0) for v in (z_t, states, mask, tokens))
        # image j of caption k draws its noise from its own CPU generator: same on any device, any batch
        generators = [torch.Generator().manual_seed(seed + 10_000 * k + j)
                      for k in range(len(captions)) for j in range(n)]
        z_i = z_t if embedding == "text" else None
        if embedding == "prior":
            z_i = self._sample_prior(z_t, states, mask, prior_steps, prior_guidance, candidates,
                                     generators, progress)
        length = int(mask.sum(1).max())  # trailing padding cut: the caption encoder is causal
        caption = (tokens[:, :length], mask[:, :length]) if self.decoder.cfg.text_layers else ()
        return self._decode(z_i, generators, None, eta, *caption, decoder_steps=decoder_steps,
                            decoder_guidance=decoder_guidance, upsampler_steps=upsampler_steps,
                            stages=stages, progress=progress)

    def _image(self, image) -> torch.Tensor:
        """A [3, H, W] or [1, 3, H, W] tensor in [-1, 1] (see read_image) -> [1, 3, S, S]."""
        x = torch.as_tensor(image, dtype=torch.float32)
        x = x[None] if x.dim() == 3 else x
        if x.dim() != 4 or tuple(x.shape[:2]) != (1, 3):
            raise ValueError(f"expected one image [3, H, W] or [1, 3, H, W], got {tuple(x.shape)}")
        S = self.image_size
        if x.shape[-2:] != (S, S):
            x = F.interpolate(x, size=(S, S), mode="bicubic", antialias=True).clamp(-1, 1)
        return x.to(self.clip.device)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] -> z_i [B, D]; the toy CLIP takes only its own resolution."""
        R = self.clip.model.config.image_resolution
        if self.clip.kind == "toy" and x.shape[-1] != R:
            x = F.interpolate(x, size=(R, R), mode="bicubic", antialias=True).clamp(-1, 1)
        return self.clip.encode_image(x)

    def _invert(self, x, z_i, decoder_steps=50, decoder_guidance=3.0, **_):
        """x_T by DDIM inversion [DDIM] Sec. 4.3, with the decoding's steps and guidance: η = 0 gives x."""
        return self.decoder.invert(x, z_i, None, None, steps=decoder_steps, guidance_scale=decoder_guidance)

    @torch.no_grad()
    def variations(self, image, n=4, eta=1.0, seed=0, invert=False, **options) -> dict:
        """[unCLIP] Sec. 3.1: decode the image's own z_i n times. DDIM with η > 0 gives variations
        that keep what CLIP encodes; invert=True starts from the DDIM-inverted x_T, so η = 0
        reconstructs it. options (as generate's): decoder_*, upsampler_steps, stages, progress."""
        x = self._image(image)
        z_i = self._embed(x).expand(n, -1)  # [n, D]
        noise = self._invert(x, z_i[:1], **options).expand(n, -1, -1, -1) if invert else None
        return self._decode(z_i, torch.Generator().manual_seed(seed), noise, eta, **options)

    @torch.no_grad()
    def interpolate(self, image_a, image_b, steps=5, seed=0, invert=False, **options) -> dict:
        """[unCLIP] Sec. 3.2: frames decode z_θ = slerp(z_a, z_b, θ), θ evenly spaced in [0, 1],
        with DDIM η = 0 from one x_T: a random one, the same for every frame, or with invert=True
        slerp(x_T(a), x_T(b), θ) of the DDIM-inverted latents, so the end frames reconstruct."""
        if steps < 2:
            raise ValueError(f"an interpolation needs at least 2 frames, got steps={steps}")
        x = torch.cat([self._image(image_a), self._image(image_b)])  # [2, 3, S, S]
        z = self._embed(x)  # [2, D]
        theta, generator = torch.linspace(0, 1, steps), torch.Generator().manual_seed(seed)
        if invert:
            noise = slerp(*self._invert(x, z, **options).split(1), theta)  # [steps, 3, S, S]
        else:
            noise = torch.randn((1, *x.shape[1:]), generator=generator).expand(steps, -1, -1, -1)
        z_theta = slerp(z[:1], z[1:], theta)  # [steps, D]
        return self._decode(z_theta, generator, noise, 0.0, fixed_noise=True, **options)

    @torch.no_grad()
    def text_diff(self, image, old_caption, new_caption, thetas=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                  seed=0, **options) -> dict:
        """[unCLIP] Sec. 3.3: z_d = norm(z_t(new) - z_t(old)); frame θ decodes slerp(z_i, z_d, θ)
        with DDIM η = 0 from the image's DDIM-inverted x_T, fixed across frames, so θ = 0
        reconstructs the image. The seed fixes the upsamplers' noise."""
        x = self._image(image)
        z_i = self._embed(x)  # [1, D]
        z_t = self.clip.encode_text([old_caption, new_caption])[0]  # [2, D]
        if (z_t[1] - z_t[0]).norm() < 1e-6:
            raise ValueError(f"{old_caption!r} and {new_caption!r} have the same z_t: a text diff "
                             "needs two captions that CLIP tells apart")
        z_d = F.normalize(z_t[1:] - z_t[:1], dim=-1)
        z_theta = slerp(z_i, z_d, torch.as_tensor(thetas))  # [K, D]
        noise = self._invert(x, z_i, **options).expand(len(z_theta), -1, -1, -1)
        generator = torch.Generator().manual_seed(seed)
        return self._decode(z_theta, generator, noise, 0.0, fixed_noise=True, **options)


def save_pipeline(path, clip, prior=None, decoder=None, upsamplers=()) -> None:
    """One file with every stage of an UnCLIP, or of the parts (clip a FrozenCLIP, or a CLIP trained with
    ByteTokenizer): {"format": 1, "clip", "tokenizer", "prior" (+ "kind": "diffusion" | "ar"; absent if
    None), "decoder", "upsamplers": [...]}, each a {"config", "state_dict"}; atomic (path.tmp, renamed)."""
    if isinstance(clip, UnCLIP):
        clip, prior, decoder, upsamplers = clip.clip, clip.prior, clip.decoder, clip.upsamplers
    if isinstance(clip, CLIP):  # a bare toy CLIP: the byte tokenizer of its context length
        model, tokenizer, kind = clip, ByteTokenizer(clip.config.context_length), "toy"
    else:
        model, tokenizer, kind = clip.model, clip.tokenizer, clip.kind
    if decoder is None or not isinstance(tokenizer, ByteTokenizer):
        raise ValueError("save_pipeline needs a decoder, and a CLIP with the ByteTokenizer")
    entry = lambda m, **extra: {"config": asdict(m.config if isinstance(m, CLIP) else m.cfg),
                                "state_dict": m.state_dict(), **extra}  # CLIP keeps OpenAI's name
    ckpt = {"format": FORMAT, "clip": entry(model, kind=kind),
            "tokenizer": {"kind": "byte", "context_length": tokenizer.context_length,
                          "truncate": tokenizer.truncate},
            "decoder": entry(decoder), "upsamplers": [entry(up) for up in upsamplers]}
    if prior is not None:
        ckpt["prior"] = entry(prior, kind="ar" if isinstance(prior, ARPrior) else "diffusion")
    torch.save(ckpt, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def _read(path) -> dict:
    """torch.load(weights_only=True): loading never runs pickled code; errors say what was found."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}; {HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or not written by torch.save
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"cannot read {path}: it is corrupt, truncated or not a torch checkpoint "
                         f"({reason}); {HINT}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict; {HINT}")
    return ckpt


def _build(cls, config_cls, entry, what: str, where):
    try:
        module = cls(config_cls(**entry["config"]))
        module.load_state_dict(entry["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # e.g. no "config", other shapes
        raise ValueError(f"{where}: the {what} checkpoint does not fit this code's {cls.__name__} "
                         f"({type(e).__name__}: {str(e)[:300]}); {HINT}") from None
    return module


def _assemble(ckpt: dict, where, device) -> UnCLIP:
    if ckpt.get("format") != FORMAT:
        hint = "one stage's file? pass its folder" if "config" in ckpt else "use the unclip.py that wrote it"
        raise ValueError(f"{where} has format version {ckpt.get('format')!r} (keys {sorted(ckpt)}), but this "
                         f"unclip.py reads version {FORMAT} pipeline files: {hint}, or {HINT}")
    missing = [k for k in ("clip", "tokenizer", "decoder") if ckpt.get(k) is None]
    prior = ckpt.get("prior")
    kind = prior.get("kind", "diffusion") if isinstance(prior, dict) else "diffusion"
    if missing or ckpt["tokenizer"].get("kind") != "byte" or kind not in PRIORS:
        raise ValueError(f"{where} lacks {', '.join(missing) or 'a byte tokenizer'} or has an "
                         f"unknown prior kind {kind!r} (found: {', '.join(sorted(ckpt))}); {HINT}")
    model = _build(CLIP, CLIPConfig, ckpt["clip"], "clip", where)
    tok = ckpt["tokenizer"]  # context_length None: the CLIP's own (see from_stage_checkpoints)
    tokenizer = ByteTokenizer(tok["context_length"] or model.config.context_length, tok["truncate"])
    clip = FrozenCLIP(model, tokenizer, kind=ckpt["clip"].get("kind", "toy"))
    if prior is not None:
        prior = _build(*PRIORS[kind], prior, f"{kind} prior", where)
    decoder = _build(Decoder, DecoderConfig, ckpt["decoder"], "decoder", where)
    ups = [_build(Upsampler, UpsamplerConfig, entry, f"up{i + 1}", where)
           for i, entry in enumerate(ckpt.get("upsamplers", []))]
    return UnCLIP(clip, prior, decoder, ups).to(device)


def load_pipeline(path, device="cpu") -> UnCLIP:
    """The UnCLIP in a save_pipeline file, on `device`."""
    return _assemble(_read(path), path, device)


def from_stage_checkpoints(folder, device="cpu", prior_kind=None) -> UnCLIP:
    """The UnCLIP from train_toy.py's stage files (resume state ignored): clip.pt, decoder.pt, up1.pt
    and up2.pt if present, prior.pt or ar_prior.pt (prior_kind "diffusion"/"ar"; None: prior.pt first)."""
    if prior_kind not in (None, "diffusion", "ar"):
        raise ValueError(f"prior_kind must be 'diffusion', 'ar' or None, got {prior_kind!r}")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pt")) if os.path.isdir(folder) else []
    if not {"clip.pt", "decoder.pt"} <= set(files):
        raise FileNotFoundError(f"{folder} needs clip.pt and decoder.pt (found: "
                                f"{', '.join(files) or 'no .pt files'}); {HINT}")
    read = lambda name: _read(os.path.join(folder, name))
    names = {"diffusion": "prior.pt", "ar": "ar_prior.pt"}
    kind = next((k for k in ([prior_kind] if prior_kind else names) if names[k] in files), None)
    prior = {**read(names[kind]), "kind": kind} if kind else None
    ups = [read(name) for name in ("up1.pt", "up2.pt") if name in files and "up1.pt" in files]
    return _assemble({"format": FORMAT, "clip": read("clip.pt"), "decoder": read("decoder.pt"),
                      "tokenizer": {"kind": "byte", "context_length": None, "truncate": True},
                      "prior": prior, "upsamplers": ups}, folder, device)


EXAMPLES = """examples:
  python unclip.py "a red circle in the top left" --checkpoint runs/toy/unclip.pt --n 8
  python unclip.py "a red circle" --embedding text             # zero-shot: decode z_t, no prior
  python unclip.py --variations photo.png --n 6 --out variations.png
  python unclip.py --interpolate a.png b.png --n 8 --invert --out interpolation.png
  python unclip.py --text-diff a.png "a red circle" "a blue circle" --n 6 --out diff.png
A user error (bad caption, image or checkpoint) prints a message and exits with status 2."""


def read_image(path: str, size: int) -> torch.Tensor:
    """Any readable image -> [1, 3, size, size] in [-1, 1]: RGB, center-cropped, resized (noted)."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    (w, h), side = image.size, min(image.size)
    changes = ((image.mode != "RGB", f"converted from mode {image.mode} to RGB"),
               (w != h, f"center-cropped {w}x{h} to {side}x{side}"),
               (side != size, f"resized to {size}x{size}, the decoder's resolution"))
    notes = [note for changed, note in changes if changed]
    if notes:
        print(f"note: {path}: {'; '.join(notes)}", file=sys.stderr)
    image = ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC)  # center crop, resize
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def progress_printer():
    """progress(stage, step, steps) printing about four lines per stage, with its rate, on stderr."""
    start = last = time.perf_counter()

    def progress(stage, i, n):
        nonlocal start, last
        if i == 1:  # a stage begins where the previous report ended
            start = last
        last = time.perf_counter()
        if i == n or i % max(1, n // 4) == 0:
            print(f"{stage} step {i}/{n} {i / max(last - start, 1e-9):.1f} it/s", file=sys.stderr, flush=True)
    return progress


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sample unCLIP: text -> image, and the applications of "
                                "[unCLIP] Sec. 3.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captions", nargs="*", help="caption(s) to draw, one grid row each")
    p.add_argument("--checkpoint", default="runs/toy/unclip.pt",
                   help="unclip.pt, or a folder of per-stage files (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--variations", metavar="IMAGE", help="variations of an image (Sec. 3.1)")
    mode.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="A to B (Sec. 3.2)")
    mode.add_argument("--text-diff", nargs=3, metavar=("IMAGE", "OLD", "NEW"),
                      help="move IMAGE along z_t(NEW) - z_t(OLD), θ from 0 to 0.5 (Sec. 3.3)")
    p.add_argument("--n", type=int, default=8, help="images per caption, or frames (default 8)")
    p.add_argument("--out", default="out.png", help="grid PNG to write (default out.png)")
    p.add_argument("--seed", type=int, default=0, help="image j of caption k uses seed + 10000 k + j")
    p.add_argument("--prior-steps", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="decoder steps (default 50)")
    p.add_argument("--upsampler-steps", type=int, nargs="+", help="one value, or one per stage")
    p.add_argument("--guidance", type=float, default=3.0, help="decoder guidance (default 3)")
    p.add_argument("--eta", type=float, help="decoder DDIM η (default ancestral; variations 1)")
    p.add_argument("--stage", default="all", choices=("all", *STAGES[1:]), help="last stage to run")
    p.add_argument("--embedding", default="prior", choices=("prior", "text", "none"),
                   help="z_i from the prior, z_t itself (zero-shot), or none (caption only)")
    p.add_argument("--invert", action="store_true", help="start from DDIM-inverted x_T")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--strict", action="store_true", help="an over-long caption is an error")
    try:
        run(p.parse_args(argv))
    except (ValueError, OSError) as e:  # user errors: a message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(args) -> None:
    n, edit = args.n, args.variations or args.interpolate or args.text_diff
    if n < (2 if args.interpolate else 1):
        raise ValueError(f"--n must be at least {2 if args.interpolate else 1}, got {n}")
    if bool(args.captions) == bool(edit):
        raise ValueError('give a caption, e.g. "a red circle", or one of --variations, --interpolate '
                         "and --text-diff, not both (see --help)")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    device = {"auto": "cuda" if cuda else "mps" if mps else "cpu"}.get(args.device, args.device)
    if not {"cpu": True, "cuda": cuda, "mps": mps}[device]:
        raise ValueError(f"--device {device} is not available here; use cpu or auto")
    load = from_stage_checkpoints if os.path.isdir(args.checkpoint) else load_pipeline
    pipe, steps = load(args.checkpoint, device), args.upsampler_steps
    options = dict(seed=args.seed, decoder_steps=args.steps, decoder_guidance=args.guidance,
                   upsampler_steps=steps[0] if steps and len(steps) == 1 else steps,
                   stages=args.stage, progress=progress_printer())
    for caption in args.captions + (args.text_diff[1:] if args.text_diff else []):
        if not caption.strip():
            raise ValueError('empty caption: give some text, e.g. "a red circle in the top left"')
        needed, L = len(pipe.clip.tokenizer.encode(caption)) + 2, pipe.clip.tokenizer.context_length
        if needed > L:  # (start and end tokens count) truncated: a warning, or with --strict an error
            message = f"caption {caption[:30]!r}... needs {needed} tokens, over the context length {L}"
            if args.strict:
                raise ValueError(f"{message}; shorten it (without --strict it is truncated)")
            print(f"warning: {message}; only its first {L - 2} tokens are used", file=sys.stderr)
    read = lambda path: read_image(path, pipe.image_size)  # input images: the decoder's size
    if args.variations:
        x, eta = read(args.variations), 1.0 if args.eta is None else args.eta
        out = pipe.variations(x, n, eta, invert=args.invert, **options)
        shown, labels = [x], ["input"] + [f"variation {j + 1}" for j in range(n)]
    elif args.interpolate:
        out = pipe.interpolate(*map(read, args.interpolate), n, invert=args.invert, **options)
        shown, labels = [], [f"theta {t:.2f}" for t in torch.linspace(0, 1, n).tolist()]
    elif args.text_diff:
        x, thetas = read(args.text_diff[0]), torch.linspace(0, 0.5, n).tolist()
        out = pipe.text_diff(x, *args.text_diff[1:], thetas, **options)
        shown, labels = [x], ["input"] + [f"theta {t:.2f}" for t in thetas]
    else:
        out = pipe.generate(args.captions, n, prior_steps=args.prior_steps, eta=args.eta,
                            embedding=args.embedding, **options)
        shown, labels = [], [c if j == 0 else "" for c in args.captions for j in range(n)]
    images = out["images"][-1].cpu()
    size = images.shape[-1]
    tiles = torch.cat([*(F.interpolate(x, size=(size, size)) for x in shown), images])
    save_grid(list(tiles), labels, args.out, ncol=len(tiles) if shown else n)
    print(f"wrote {args.out}: {len(images)} images of {size}x{size}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
