"""unCLIP [unCLIP]: the whole system of the paper, its applications, one-file checkpoints (the
command line `python unclip.py` is unclip_cli.py).

A frozen CLIP reads the caption y into z_t; a prior P(z_i | y) proposes a CLIP image embedding z_i
(both unit-norm, [B, D]); the decoder P(x | z_i, y) draws an S x S image from noise x_T; zero, one
or two upsamplers enlarge it to 2S, 4S ([unCLIP] Fig. 2). Stages: "prior", "decoder", "up1", "up2".
This file only composes the modules below it: the math lives there."""

import contextlib
import math
import os
import sys
from dataclasses import asdict, fields
from itertools import count

import torch
import torch.nn.functional as F
from PIL import Image

from clip_frozen import (
    CLIP,
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CLIPConfig,
    FrozenCLIP,
    make_tokenizer,
    tokenizer_kind,
)
from decoder import Decoder, DecoderConfig
from diffusion import autocast
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from upsample import Upsampler, UpsamplerConfig

FORMAT = 1  # layout version of the one-file checkpoint; bump it when the layout changes
HINT = "train one with: python train_toy.py"
STAGES = ("prior", "decoder", "up1", "up2")
BATCH = 16  # rows sampled at once by default: a batch of 16 at 128x128 stays under 1 GB of memory
PRIORS = {"diffusion": (DiffusionPrior, DiffusionPriorConfig), "ar": (ARPrior, ARPriorConfig)}


def slerp(a: torch.Tensor, b: torch.Tensor, theta) -> torch.Tensor:
    """Spherical interpolation row by row ([unCLIP] Sec. 3.2, Shoemake 1985): a, b [B, ...] or [D],
    θ a float or [K] -> sin((1-θ)Ω)/sin Ω · a + sin(θΩ)/sin Ω · b, cos Ω = â·b̂; lerp where sin Ω ≈ 0."""
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


def need(name: str, value, least=1) -> int:
    """value if it is an int >= least (a bool is not one); else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be at least {least} (an integer), got {value!r}")
    return value


class UnCLIP:
    """clip: FrozenCLIP; prior: DiffusionPrior, ARPrior or None (then only the prior-free baselines and
    the image applications run); decoder: Decoder; upsamplers: 0-2, each fed the previous size.
    Options of every sampling method: decoder_steps=50, decoder_guidance=3.0, upsampler_steps (None:
    each one's own, an int, or one per upsampler), stages="all" or the last stage, batch_size=BATCH
    rows at a time, stream=False (True: the micro-batches one by one, so memory does not grow with the
    rows), precision=None (the caller's autocast; "auto", "fp32" or "bf16": diffusion.autocast's)
    and progress(stage, step, steps). The images do not depend on batch_size or the device."""

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

    def _autocast(self, precision=None, **_):
        """The context the networks run in: the caller's own for None, else diffusion.autocast's."""
        return contextlib.nullcontext() if precision is None else autocast(self.clip.device, precision)

    def _sample_prior(self, z_t, states, mask, steps, guidance, candidates, generators, progress):
        """z_i [n, D], row r drawn with generators[r]; a forward hook reports each network call."""
        ar, calls = isinstance(self.prior, ARPrior), count(1)
        total = self.prior.cfg.pca_dims + 1 if ar else steps  # network calls for one row
        sample = lambda r, g, **kw: self.prior.sample(z_t[r], states[r], mask[r], guidance_scale=guidance,
                                                      candidates=candidates, generator=g, **kw)

        def tick(*_):  # returns None: a forward hook's return value would replace the output
            if progress:
                progress("prior", min(next(calls), total), total)
        hook = self.prior.register_forward_hook(tick)
        try:  # token by token, a batch draws from one generator: the AR prior samples row by row
            if ar:
                return torch.cat([sample(slice(r, r + 1), g) for r, g in enumerate(generators)])
            # the k candidates of row r draw from generators[r] one after the other
            return sample(slice(None), [g for g in generators for _ in range(candidates)], steps=steps)
        finally:
            hook.remove()

    def _decode(self, rows, seeds, eta=None, fixed=None, decoder_steps=50, decoder_guidance=3.0,
                upsampler_steps=None, stages="all", progress=None, batch_size=BATCH, stream=False,
                precision=None):
        """rows(r, generators) -> (z_i, tokens, mask, x_T) of the rows in slice r, one row for all, or None;
        row b draws all its noise from a CPU generator seeded seeds[b]. fixed: a generator for one
        upsampler x_T shared by all rows (an edit's frames). -> generate's dict, or its micro-batches."""
        if stages not in ("all", *STAGES):
            raise ValueError(f"stages must be 'all' or one of {STAGES}, got {stages!r}")
        if stages.startswith("up") and stages not in self.stages:
            raise ValueError(f"stage {stages!r} needs an upsampler this pipeline lacks (it has "
                             f"{', '.join(self.stages)}); {HINT}")
        last = STAGES.index(self.stages[-1] if stages == "all" else stages)
        _ = self._autocast(precision), need("decoder_steps", decoder_steps, 2)  # raise now, not at a next()
        ups, size = self.upsamplers[:max(0, last - 1)], need("batch_size", batch_size)
        up_steps = (upsampler_steps if isinstance(upsampler_steps, list | tuple)
                    else [upsampler_steps] * len(ups))
        if len(up_steps) < len(ups):
            raise ValueError(f"upsampler_steps={upsampler_steps}: need one per upsampler")
        _ = [need("upsampler_steps", s, 2) for s in up_steps[:len(ups)] if s is not None]
        if isinstance(decoder_guidance, bool) or not isinstance(decoder_guidance, int | float) \
                or not math.isfinite(decoder_guidance):  # NaN would turn every image NaN
            raise ValueError(f"decoder_guidance must be a finite number, got {decoder_guidance!r}")
        up_noise = [None if fixed is None else torch.randn((1, 3, up.cfg.high_res, up.cfg.high_res),
                                                           generator=fixed) for up in ups]
        report = lambda stage: progress and (lambda i, k: progress(stage, i, k))  # for a sampler
        cascade = lambda out: {**out, "images": [out[s] for s in STAGES[1:] if s in out]}

        @torch.no_grad()
        def batch(r):  # the autocast is entered and left within a micro-batch, never across a yield
            gens = [torch.Generator().manual_seed(s) for s in seeds[r]]
            rows_of = lambda x: x if x is None else x.expand(len(gens), *x.shape[1:])  # one row serves all
            with self._autocast(precision):
                z_i, tokens, mask, x_T = map(rows_of, rows(r, gens))
                out = {"z_i": z_i}
                if last > 0:
                    x = out["decoder"] = self.decoder.sample(
                        z_i, tokens, mask, steps=decoder_steps, guidance_scale=decoder_guidance, eta=eta,
                        noise=x_T, generator=gens, progress=report("decoder")).clamp(-1, 1)
                for stage, up, steps, x_T in zip(STAGES[2:], ups, up_steps, up_noise, strict=False):
                    x = out[stage] = up.sample(x, steps, noise=rows_of(x_T), generator=gens,
                                               progress=report(stage))
            return cascade(out)

        batches = (batch(slice(b, b + size)) for b in range(0, len(seeds), size))
        if stream:
            return batches
        batches = list(batches)  # one dict, each tensor's rows in order
        return cascade({k: v if v is None else torch.cat([b[k] for b in batches])
                        for k, v in batches[0].items() if k != "images"})

    def generate(self, captions, images_per_caption=1, seed=0, prior_steps=64, prior_guidance=1.0,
                 candidates=2, eta=None, embedding="prior", **options):
        """Text -> images [unCLIP] Sec. 2: z_i ~ prior(y), x ~ decoder(z_i, y), then upsamplers.
        -> {"z_i": [K n, D], "decoder": [K n, 3, S, S], "up1", "up2", "images": the image tensors in
        cascade order} up to `stages`, image j of caption k in row k n + j, its noise from a generator
        seeded seed + max(10000, n) k + j. eta: the decoder's sampler (None ancestral, float DDIM).
        embedding: "prior", or a baseline of [unCLIP] Sec. 5.1: "text" (z_t as z_i, zero-shot), "none"
        (the caption alone)."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if embedding not in ("prior", "text", "none"):
            raise ValueError(f"embedding must be 'prior', 'text' or 'none', got {embedding!r}")
        if embedding == "prior" and self.prior is None:
            raise ValueError(f"this pipeline has no prior (it has {', '.join(self.stages)}); use "
                             f"embedding 'text' or 'none', or {HINT}")
        n, text = need("images_per_caption", images_per_caption), self.decoder.cfg.text_layers > 0
        with self._autocast(**options):
            z_t, states, mask = self.clip.encode_text(captions)  # one row per caption
        length = int(mask.sum(1).max())  # trailing padding cut: the caption encoder is causal
        tokens, cut = self.clip.tokenize(captions)[0][:, :length], mask[:, :length]

        def rows(r, gens):  # row k n + j is image j of caption k
            k = torch.arange(len(captions) * n)[r] // n
            z_i = {"text": z_t[k], "none": None}.get(embedding)
            if embedding == "prior":
                z_i = self._sample_prior(z_t[k], states[k], mask[k], prior_steps, prior_guidance,
                                         candidates, gens, options.get("progress"))
            return (z_i, tokens[k], cut[k], None) if text else (z_i, None, None, None)
        stride = max(10_000, n)  # no two images share a seed, and n <= 10000 keeps its images
        seeds = [seed + stride * k + j for k in range(len(captions)) for j in range(n)]
        return self._decode(rows, seeds, eta, **options)

    def _latents(self, images, invert=True, decoder_steps=50, decoder_guidance=3.0, precision=None, **_):
        """Images [3, H, W] or [1, 3, H, W] in [-1, 1] -> the bipartite latents [unCLIP] Sec. 3.1: z_i
        [B, D], and x_T [B, 3, S, S] (None if not invert) by DDIM inversion [DDIM] Sec. 4.3 with the
        decoding's steps and guidance, so that DDIM with η = 0 gives the images back."""
        xs = [(x[None] if x.dim() == 3 else x).float() for x in map(torch.as_tensor, images)]
        if any(x.dim() != 4 or x.shape[:2] != (1, 3) for x in xs):
            raise ValueError(f"expected images [3, H, W] or [1, 3, H, W], got {[tuple(x.shape) for x in xs]}")
        fit = lambda x, S: x if x.shape[-2:] == (S, S) else F.interpolate(
            x, size=(S, S), mode="bicubic", antialias=True).clamp(-1, 1)
        x = torch.cat([fit(x, self.image_size) for x in xs]).to(self.clip.device)
        with self._autocast(precision):  # the toy CLIP reads its own resolution only
            z_i = self.clip.encode_image(fit(x, self.clip.model.config.image_resolution)
                                         if self.clip.kind == "toy" else x)
            steps = need("decoder_steps", decoder_steps, 2)
            return z_i, self.decoder.invert(x, z_i, None, None, steps, decoder_guidance) if invert else None

    def variations(self, image, n=4, eta=1.0, seed=0, invert=True, **options):
        """[unCLIP] Sec. 3.1: decode the image's bipartite latent (z_i, x_T) n times with DDIM η > 0:
        variations keep what CLIP encodes, and η -> 0 gives the image back; invert=False: a random x_T.
        Variation j draws its noise from a generator seeded seed + j."""
        z_i, x_T = self._latents([image], invert, **options)  # [1, D], [1, 3, S, S] or None
        rows = lambda r, g: (z_i, None, None, x_T)  # every variation the same latent
        return self._decode(rows, range(seed, seed + need("n", n)), eta, **options)

    def interpolate(self, image_a, image_b, steps=5, seed=0, invert=True, **options):
        """[unCLIP] Sec. 3.2: frame θ (evenly spaced in [0, 1]) decodes slerp(z_a, z_b, θ) with DDIM
        η = 0 from slerp(x_T(a), x_T(b), θ), so the ends reconstruct a and b; invert=False: one random x_T
        for all frames (Fig. 4). The seed fixes that x_T and the upsamplers' noise."""
        theta, fixed = torch.linspace(0, 1, need("steps", steps, 2)), torch.Generator().manual_seed(seed)
        z, x_T = self._latents([image_a, image_b], invert, **options)  # [2, D], [2, 3, S, S] or None
        if x_T is None:  # one random x_T, drawn on the CPU
            x_T = torch.randn((1, 3, self.image_size, self.image_size), generator=fixed).expand(2, -1, -1, -1)
        rows = lambda r, _: (slerp(z[:1], z[1:], theta[r]), None, None, slerp(x_T[:1], x_T[1:], theta[r]))
        return self._decode(rows, range(seed, seed + steps), 0.0, fixed, **options)

    def text_diff(self, image, old_caption, new_caption, thetas=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                  seed=0, **options):
        """[unCLIP] Sec. 3.3: z_d = norm(z_t(new) - z_t(old)); frame θ decodes slerp(z_i, z_d, θ) with
        DDIM η = 0 from the image's x_T, so θ = 0 reconstructs it. The seed fixes the upsamplers' noise."""
        if not len(thetas):
            raise ValueError("thetas is empty: give the θ of each frame, e.g. (0.0, 0.25, 0.5)")
        z_i, x_T = self._latents([image], True, **options)
        with self._autocast(**options):
            z_t = self.clip.encode_text([old_caption, new_caption])[0]  # [2, D]
        if (z_t[1] - z_t[0]).norm() < 1e-6:
            raise ValueError(f"{old_caption!r} and {new_caption!r} have the same z_t: a text diff "
                             "needs two captions that CLIP tells apart")
        z_theta = slerp(z_i, F.normalize(z_t[1:] - z_t[:1], dim=-1), torch.as_tensor(thetas))  # [K, D]
        return self._decode(lambda r, g: (z_theta[r], None, None, x_T), range(seed, seed + len(z_theta)),
                            0.0, torch.Generator().manual_seed(seed), **options)


def save_pipeline(path, pipe: UnCLIP) -> None:
    """One file with every stage of pipe: {"format": 1, "clip", "tokenizer", "prior" (with "kind":
    "diffusion" | "ar"; absent if None), "decoder", "upsamplers": [...]}, each a {"config", "state_dict"};
    written to path.tmp and renamed, so a crash never leaves half a file."""
    tok = pipe.clip.tokenizer
    if not isinstance(tok, ByteTokenizer | BPETokenizer):  # a BPETokenizer reloads with BPE_MERGES
        raise ValueError("save_pipeline needs a CLIP with the ByteTokenizer or the BPETokenizer")
    entry = lambda m, **extra: {"config": asdict(m.config if isinstance(m, CLIP) else m.cfg),
                                "state_dict": m.state_dict(), **extra}  # CLIP keeps OpenAI's name
    ckpt = {"format": FORMAT, "clip": entry(pipe.clip.model, kind=pipe.clip.kind),
            "tokenizer": {"kind": "byte" if isinstance(tok, ByteTokenizer) else "bpe",
                          "context_length": tok.context_length, "truncate": tok.truncate},
            "decoder": entry(pipe.decoder), "upsamplers": [entry(up) for up in pipe.upsamplers]}
    if pipe.prior is not None:
        ckpt["prior"] = entry(pipe.prior, kind="ar" if isinstance(pipe.prior, ARPrior) else "diffusion")
    torch.save(ckpt, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def read_checkpoint(path) -> dict:
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
        if missing := {f.name for f in fields(config_cls)} - set(entry["config"]):  # would take defaults
            raise KeyError(f"config fields {sorted(missing)} missing")
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
    if missing or ckpt["tokenizer"].get("kind", "") not in (*TOKENIZERS, None) or kind not in PRIORS:
        raise ValueError(f"{where} lacks {', '.join(missing) or 'a byte or bpe tokenizer'} or has an "
                         f"unknown prior kind {kind!r} (found: {', '.join(sorted(ckpt))}); {HINT}")
    model = _build(CLIP, CLIPConfig, ckpt["clip"], "clip", where)
    tok, cfg = ckpt["tokenizer"], model.config  # None: the CLIP's own (see from_stage_checkpoints)
    tokenizer = make_tokenizer(tok["kind"] or tokenizer_kind(cfg.vocab_size),
                               tok["context_length"] or cfg.context_length, tok["truncate"])
    clip = FrozenCLIP(model, tokenizer, kind=ckpt["clip"].get("kind", "toy"))
    if prior is not None:
        prior = _build(*PRIORS[kind], prior, f"{kind} prior", where)
    decoder = _build(Decoder, DecoderConfig, ckpt["decoder"], "decoder", where)
    ups = [_build(Upsampler, UpsamplerConfig, entry, f"up{i + 1}", where)
           for i, entry in enumerate(ckpt.get("upsamplers", []))]
    return UnCLIP(clip, prior, decoder, ups).to(device)


def load_pipeline(path, device="cpu") -> UnCLIP:
    """The UnCLIP in a save_pipeline file, on `device`."""
    return _assemble(read_checkpoint(path), path, device)


def from_stage_checkpoints(folder, device="cpu", prior_kind=None) -> UnCLIP:
    """The UnCLIP from train_toy.py's stage files (resume state ignored): clip.pt, decoder.pt, up1.pt
    and up2.pt if present, prior.pt or ar_prior.pt (prior_kind "diffusion"/"ar"; None: prior.pt first)."""
    if prior_kind not in (None, "diffusion", "ar"):
        raise ValueError(f"prior_kind must be 'diffusion', 'ar' or None, got {prior_kind!r}")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pt")) if os.path.isdir(folder) else []
    if not {"clip.pt", "decoder.pt"} <= set(files):
        raise FileNotFoundError(f"{folder} needs clip.pt and decoder.pt (found: "
                                f"{', '.join(files) or 'no .pt files'}); {HINT}")
    read = lambda name: read_checkpoint(os.path.join(folder, name))
    names = {"diffusion": "prior.pt", "ar": "ar_prior.pt"}
    kind = next((k for k in ([prior_kind] if prior_kind else names) if names[k] in files), None)
    prior = {**read(names[kind]), "kind": kind} if kind else None
    ups = [read(name) for name in ("up1.pt", "up2.pt") if name in files and "up1.pt" in files]
    return _assemble({"format": FORMAT, "clip": read("clip.pt"), "decoder": read("decoder.pt"),
                      "tokenizer": {"kind": None, "context_length": None, "truncate": True},
                      "prior": prior, "upsamplers": ups}, folder, device)


if __name__ == "__main__":  # the command line: unclip_cli.py
    from unclip_cli import main

    sys.exit(main())
