"""How the experiments score a pipeline on Shapes: fresh scenes the training never rendered, the
Evaluator's attribute accuracy, CLIP score and FD_CLIP (clip_readings, which train_toy.py uses too), the
variety among a caption's samples, two-object binding, CLIP's zero-shot reading, and one timed row
of an experiment's table; the experiments' Settings and the lists their options take. experiments.py
builds its tables from these.

Symbols and names
    y, named   a caption and the attributes it names (toy_data.parse_caption)
    z_t, z_i   unit CLIP text / image embeddings [B, D]
    k          images per caption (diversity is measured within a caption's k images)
    a          the experiments' Settings
"""

import functools
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import metrics
import toy_data
import unclip
from decoder import Decoder
from prior import ARPrior, DiffusionPrior, trim_padding
from toy_data import ATTRIBUTES, EVAL_SEED, PAIR_ATTRIBUTES, allowed_pairs
from upsample import resize

BANK_SEED = 104_729  # the retrieval bank: fresh renders, neither training nor evaluation scenes
VALUES = {a: getattr(toy_data, f"{a.upper()}S") for a in ATTRIBUTES}  # colour -> COLOURS, ...
UNNAMED = ("size", "position", "background")  # what "a red circle" leaves free
evaluator = functools.cache(toy_data.Evaluator)  # one Evaluator: rule-based, shares nothing with CLIP


@dataclass
class Settings:
    """What the experiments read: experiments.py's command line, checked, with the run's sampling where
    it is silent. n None: DEFAULT_N's, else 64; sampling: prior_steps, candidates, decoder_steps,
    decoder_guidance; up_steps: components' upsampler DDIM steps; holdout: (colour, shape) pairs;
    prior_recipes: diversity's (steps, lr); argv: the command line less the experiment's name."""
    experiment: str
    argv: list
    run: Path
    out: Path
    n: int | None
    seed: int
    device: str
    holdout: list
    sampling: dict
    up_steps: list
    steps: list
    scales: list
    nll_stride: int
    per_caption: int
    prior_guidance: float
    bank: int
    prior_recipes: list
    train_steps: int | None


def parse_pairs(text: str) -> list:
    """'purple triangle, red circle' -> [("purple", "triangle"), ("red", "circle")], checked."""
    pairs = [tuple(p.split()) for p in text.split(",") if p.strip()]
    try:
        allowed_pairs(pairs)
    except ValueError as e:
        raise SystemExit(f"--holdout {text!r}: {e}") from None
    return pairs


def numbers(text: str, kind=int) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated numbers, e.g. 10,25,50, got {text!r}") from None


def step_lr_pairs(text: str) -> list:
    """'1200x0.001,3000x0.003' -> [(1200, 0.001), (3000, 0.003)], checked."""
    try:
        out = [(int(s), float(lr)) for s, lr in (r.split("x") for r in text.split(",") if r.strip())]
        if out and all(s >= 1 and lr > 0 for s, lr in out):
            return out
    except ValueError:  # also a recipe without exactly one x
        pass
    raise SystemExit(f"--prior-recipes {text!r}: expected STEPSxLR,..., e.g. 1200x0.001,6000x0.003")


def shapes_batch(n: int, seed: int, holdout=(), two_objects=False, sizes=(32,)) -> dict:
    """n fresh Shapes scenes, collated: caption, named, attrs (lists), images {size: [n, 3, s, s]}."""
    ds = toy_data.Shapes(n, sizes=sizes, seed=seed, holdout=holdout, two_objects=two_objects)
    return toy_data.shapes_collate([ds[i] for i in range(n)])


def scenes(n: int, seed: int, holdout=(), two_objects=False) -> tuple:
    """(captions, named dicts, real 32x32 renders [n, 3, 32, 32]) of n fresh Shapes scenes."""
    batch = shapes_batch(n, seed, holdout, two_objects)
    return batch["caption"], batch["named"], batch["images"][32]


def free_captions(a) -> tuple:
    """max(2, n / k) captions "a red circle" (size, position, background left free) of pairs the
    run trained on, and k real renders of each: (captions, real [captions k, 3, 32, 32])."""
    pairs, k = allowed_pairs(a.holdout), a.per_caption
    pairs = [pairs[i] for i in np.random.default_rng(a.seed).permutation(len(pairs))[:max(2, a.n // k)]]
    real = torch.cat([only_pair(p, k, a.seed + EVAL_SEED + 100 + j)[2] for j, p in enumerate(pairs)])
    return [f"a {c} {s}" for c, s in pairs], real


def only_pair(pair, n: int, seed: int) -> tuple:
    """n scenes of one (colour, shape) pair: every other pair held out (toy_data.sample_scene)."""
    return scenes(n, seed, holdout=[p for p in allowed_pairs() if p != tuple(pair)])


def accuracy(reads: list, named: list) -> dict:
    """{"all", then each named attribute: fraction read right} (toy_data.attribute_accuracy)."""
    acc = toy_data.attribute_accuracy(reads, named)
    return {k: acc[k]["acc"] for k in dict.fromkeys(("all", *ATTRIBUTES, *PAIR_ATTRIBUTES)) if k in acc}


def clip_readings(clip, images, captions, real) -> dict:
    """The CLIP metrics of every table here and of train_toy.py's report, one definition: the CLIP score
    of the images with their captions, FD_CLIP against the real images, and the embeddings they use."""
    z_t = clip.encode_text(captions)[0]
    z_gen, z_real = (clip.encode_image(x.to(clip.device)) for x in (images, real))
    return {"clip_score": metrics.clip_score(z_gen, z_t), "fd_clip": metrics.frechet_distance(z_gen, z_real),
            "z_t": z_t, "z_gen": z_gen, "z_real": z_real}


def score(pipe, images, captions, named, real, z_i=None, pair=False) -> dict:
    """Attribute accuracy (Evaluator) and clip_readings, one caption, named dict and real render per
    image; plus "z_i cos" when the row used an embedding."""
    reads = (evaluator().read_pair if pair else evaluator().read)(images.cpu())
    m = clip_readings(pipe.clip, images, captions, real)
    row = accuracy(reads, named) | {"CLIP score": m["clip_score"], "FD_CLIP": m["fd_clip"]}
    if z_i is not None:
        row["z_i cos"] = F.cosine_similarity(z_i, m["z_real"]).mean().item()
    cos = F.cosine_similarity(m["z_gen"].double(), m["z_t"].double(), dim=1)  # each image's CLIP score
    return row | {"_reads": reads, "_z": m["z_gen"], "_cos": cos}


def versus_unguided(rows: list, label: str) -> list:
    """Adds "CLIP score - s=1": each row's per-image CLIP score minus the same image's at guidance 1
    (row `label`; same scenes and sampling seeds, so the difference is paired), averaged, and the
    average's standard error. The rows' means alone cannot tell a gain of 0.003 from noise."""
    base = next((r for r in rows if r["row"] == label), None)
    for r in rows[1:] if base is not None else ():  # rows[0]: the real renders
        if r is not base:
            d = r["_cos"] - base["_cos"]
            r |= {"CLIP score - s=1": d.mean().item(), "paired SE": (d.std() / len(d) ** 0.5).item()}
    return rows


def real_row(pipe, captions, named, real, pair=False, label="real renders (reference)") -> dict:
    row = score(pipe, real, captions, named, real, pair=pair)
    return {"row": label} | {k: v for k, v in row.items() if k != "FD_CLIP"}


def diversity(z: torch.Tensor, reads: list, k: int) -> dict:
    """Within each caption's k images: mean pairwise 1 - cos of their CLIP image embeddings, the fraction
    of UNNAMED attributes that take >= 2 values, and the mean number of values each takes."""
    z = z.view(-1, k, z.shape[-1])  # [captions, k, D]
    # clamped: rounding leaves 1 - cos of two equal unit vectors at -1e-7, not 0
    spread = (1 - z @ z.transpose(1, 2)).clamp(min=0)[:, ~torch.eye(k, dtype=torch.bool)].mean().item()
    groups = [reads[i:i + k] for i in range(0, len(reads), k)]
    distinct = {u: [len({r[u] for r in g}) for g in groups] for u in UNNAMED}  # values per caption
    varied = [d > 1 for counts in distinct.values() for d in counts]
    return {"z_i spread": spread, "unnamed varied": sum(varied) / len(varied)} | {
        f"distinct {u}s": sum(counts) / len(counts) for u, counts in distinct.items()}


def binding(reads: list, named: list) -> dict:
    """Two-object scenes [unCLIP] Sec. 7: do both named colours and both named shapes appear,
    and if they do, is each colour on its own shape ("bound") or on the other one ("swapped")?"""
    counts = Counter()
    for r, n in zip(reads, named, strict=True):
        got = {(r[f"{s}_colour"], r[f"{s}_shape"]) for s in ("left", "right")}
        want = {(n[f"{s}_colour"], n[f"{s}_shape"]) for s in ("left", "right")}
        swap = {(n["left_colour"], n["right_shape"]), (n["right_colour"], n["left_shape"])}
        colours, shapes = ({c for c, _ in got} == {c for c, _ in want},
                           {s for _, s in got} == {s for _, s in want})
        counts.update({"both colours": colours, "both shapes": shapes, "bound": got == want,
                       "swapped": got == swap, "present": colours and shapes})
    present = counts["present"]  # both colours and both shapes: only two pairings exist, chance is 1/2
    return {k: counts[k] / len(reads) for k in ("both colours", "both shapes", "bound", "swapped")} | {
        "bound given both present": counts["bound"] / present if present else None}


def full_caption(attrs: dict) -> str:
    """A caption naming all five attributes, each in the grammar's first wording."""
    return (f"a {toy_data.SIZE_WORDS[attrs['size']][0]} {attrs['colour']} {attrs['shape']} "
            f"{toy_data.POSITION_PHRASES[attrs['position']][0]} on a {attrs['background']} background")


def zero_shot(encode_text, z_i: torch.Tensor, attrs: list) -> dict:
    """[CLIP] zero-shot reading of each attribute: of the captions that differ only in it (the
    others at their true values), the one whose z_t is closest to the image's z_i [n, D]."""
    out = {}
    for attr, values in VALUES.items():
        captions = [full_caption(t | {attr: v}) for t in attrs for v in values]
        z_t = encode_text(captions)[0].view(len(attrs), len(values), -1)  # [n, values, D], unit
        guess = torch.einsum("nd,nvd->nv", z_i, z_t).argmax(1).tolist()
        out[attr] = sum(values[g] == t[attr] for g, t in zip(guess, attrs, strict=True)) / len(attrs)
    return out


def timed(label, pipe, captions, named, real, a, pair=False, k=1, **override) -> dict:
    """A row: k images per caption up to the decoder, sampled with a.sampling | override, scored, timed."""
    clock = time.perf_counter()
    out = pipe.generate(captions, images_per_caption=k, seed=a.seed, stages="decoder",
                        **(a.sampling | override))
    row = score(pipe, out["decoder"], [c for c in captions for _ in range(k)], named, real, out["z_i"], pair)
    row |= diversity(row["_z"], row["_reads"], k) if k > 1 else {}
    return {"row": label} | row | {"seconds": time.perf_counter() - clock, "_images": out["decoder"]}


def bits_per_dim(decoder, clip, captions, real, stride: int = 1, seed: int = 0) -> float:
    """[IDDPM] Tables 1-2: the decoder's variational bound on -log p(x_0) in bits/dim, averaged over
    real renders [B, 3, S, S] quantized to 8 bits (the discretized likelihood's grid), each given its
    own z_i and caption: no dropout, no guidance. The same seed gives every decoder the same t and noise."""
    x_0 = ((real.float() + 1) * 127.5).round() / 127.5 - 1
    x_0 = x_0.to(next(decoder.parameters()).device)
    tokens, mask = clip.tokenize(captions) if decoder.cfg.text_layers > 0 else (None, None)
    generator = torch.Generator(x_0.device).manual_seed(seed)
    nll = decoder.diffusion.nll_bits_per_dim(decoder.net, x_0, stride, generator, z_i=clip.encode_image(x_0),
                                             tokens=tokens, mask=mask)
    return nll.mean().item()


def curve_rows(run) -> tuple:
    """Each stage checkpoint's per-step loss history in the run folder: (rows of its first and last
    10% means and train seconds from report.json, a chart panel of the loss per stage)."""
    report = run / "report.json"
    seconds = json.loads(report.read_text()).get("seconds", {}) if report.exists() else {}
    rows, panels = [], []
    for stage in ("clip", "prior", "ar_prior", "decoder", "up1", "up2"):
        path = run / f"{stage}.pt"
        history = path.exists() and torch.load(path, weights_only=True).get("train", {}).get("history")
        if not history:
            continue  # no such stage, or a file without training state (e.g. written by save())
        tenth = max(1, len(history) // 10)
        rows.append({"row": stage, "steps": len(history), "loss, first 10%": float(np.mean(history[:tenth])),
                     "loss, last 10%": float(np.mean(history[-tenth:])), "train seconds": seconds.get(stage)})
        curve = loss_curve(history)
        panels.append({"title": stage, "x": "step", "y": "loss (window mean)",
                       "log_y": min(v for _, v in curve) > 0, "series": {stage: curve}})
    return rows, panels


def along(xs: list, rows: list, key: str) -> list:
    """[(x, row[key])] for a chart's series: one row per x."""
    return [(x, r[key]) for x, r in zip(xs, rows, strict=True)]


def loss_curve(history: list, points: int = 200) -> list:
    """[(step, mean loss)] of a stage's per-step loss history, averaged over windows of len // points steps
    (at least one): about `points` windows, each step its own below 2 * points steps."""
    if not history:
        raise ValueError("empty loss history")
    size = max(1, len(history) // points)
    return [(i + size / 2, sum(history[i:i + size]) / len(history[i:i + size]))
            for i in range(0, len(history), size)]


# ----------------------------------------------------------------------------- each module on its own

def retrieval_bank(a, pipe) -> tuple:
    """a.bank fresh renders: (collated batch, their z_i, nearest(z) -> reads of each z's nearest render)."""
    bank = shapes_batch(a.bank, a.seed + BANK_SEED, a.holdout)
    z_bank, reads = pipe.clip.encode_image(bank["images"][32]), evaluator().read(bank["images"][32])
    return bank, z_bank, lambda z: [reads[j] for j in (z @ z_bank.T).argmax(1).tolist()]


def embedding_row(label, z, z_true, named, nearest, z_free=None, k=1) -> dict:
    """z_i [n or 1, D] for captions with `named` attributes, against the true z_i of their renders:
    mean cos, retrieval accuracy (the nearest bank render's reading), and, given k samples of each
    loose caption (z_free), the variety among them."""
    z = z.expand_as(z_true)
    return ({"row": label, "z_i cos": F.cosine_similarity(z, z_true).mean().item()}
            | accuracy(nearest(z), named) | ({} if z_free is None else diversity(z_free, nearest(z_free), k)))


def sample_prior(a, pipe, prior, captions, k, candidates) -> torch.Tensor:
    """k samples z_i of each caption [len(captions) k, D], seeded as UnCLIP.generate seeds them."""
    return unclip.UnCLIP(pipe.clip, prior, pipe.decoder).generate(
        captions, k, seed=a.seed, prior_steps=a.sampling["prior_steps"], candidates=candidates,
        stages="prior")["z_i"]


def exact_denoiser(diffusion, x: torch.Tensor):
    """The exact x_0-prediction for data uniform over the points x [m, D]: E[x_0 | x_t] = sum_j w_j x_j,
    w = softmax_j(-|x_t - sqrt(abar_t) x_j|^2 / (2 (1 - abar_t))), t the base diffusion's own steps."""
    def denoise(x_t, t):
        ab = diffusion.alpha_bar[t][:, None, None]
        return (-((x_t[:, None] - ab.sqrt() * x) ** 2).sum(-1) / (2 * (1 - ab[:, 0]))).softmax(1) @ x
    return denoise


def exact_prior_samples(diffusion, points: list, k: int, steps: int, seed: int) -> torch.Tensor:
    """k samples for each set of unit z_i in `points` ([m_j, D] each): the prior's sampler run with the
    exact denoiser of that set on the prior's sqrt(D) scale. An exact sampler returns the set's own
    points, so this row shows what the sampler and the x_0 parameterization lose: nothing or not."""
    out = []
    for j, z in enumerate(points):
        x = F.normalize(z.float(), dim=-1) * z.shape[-1] ** 0.5
        gen = torch.Generator().manual_seed(seed + j)  # on the CPU: the same samples on every device
        sample = diffusion.respace(steps).sample(exact_denoiser(diffusion, x), (k, x.shape[-1]),
                                                 generator=gen, clip="none")
        out.append(F.normalize(sample, dim=-1))
    return torch.cat(out)


def prior_rows(a, pipe, held) -> list:
    """Each prior's z_i against the true one, the nearest real render (by cos) in a bank
    of fresh renders, the variety among k samples for a loose caption, best-of-2 against one
    sample; z_t and the bank's mean z_i are the baselines, a bank render with the caption's
    attributes what an exact sampler of p(z_i | y) scores, the true z_i the ceiling."""
    bank, z_bank, nearest = retrieval_bank(a, pipe)
    captions, k, (free, free_real) = held["caption"], a.per_caption, free_captions(a)
    z_true, z_t = pipe.clip.encode_image(held["images"][32]), pipe.clip.encode_text(captions)[0]
    row = functools.partial(embedding_row, z_true=z_true, named=held["named"], nearest=nearest, k=k)
    rows = [row("true z_i (retrieval ceiling)", z_true, z_free=pipe.clip.encode_image(free_real)),
            row("z_t as z_i (no prior)", z_t, z_free=pipe.clip.encode_text(free)[0].repeat_interleave(k, 0)),
            row("mean z_i of the bank", z_bank.mean(0, keepdim=True))]
    # an exact sampler of p(z_i | y): a random bank render with every attribute y names (if the
    # bank has none, the render nearest the truth). z_i cos is highest at the mean of p(z_i | y),
    # so a prior can beat this row only by collapsing towards that mean (EXPERIMENTS.md, "Prior")
    rng = np.random.default_rng(a.seed)
    match = [rng.choice(matching(bank, n) or [j])
             for n, j in zip(held["named"], (z_true @ z_bank.T).argmax(1).tolist(), strict=True)]
    rows.append(row("a bank render with the named attributes (an exact sample given y)", z_bank[match]))
    priors = [("diffusion prior", pipe.prior)] if isinstance(pipe.prior, DiffusionPrior) else []
    ar = [p for p in (a.run / "ar_prior.pt", a.run / "exp_ar_prior" / "ar_prior.pt") if p.exists()][:1]
    priors += [(f"AR prior ({p.relative_to(a.run)})", ARPrior.load(p, map_location=a.device)) for p in ar]
    for label, prior in priors:
        clock, c = time.perf_counter(), a.sampling["candidates"]
        z = {n: sample_prior(a, pipe, prior, captions, 1, n) for n in dict.fromkeys((c, 1, 2))}
        rows.append(row(label, z[c], z_free=sample_prior(a, pipe, prior, free, k, c))
                    | {f"cos z_t, best of {n}": F.cosine_similarity(z[n], z_t).mean().item() for n in (1, 2)}
                    | {"seconds": time.perf_counter() - clock})
    return rows


def matching(bank: dict, named: dict) -> list:
    """Indices of the bank renders that have every attribute `named` names."""
    return [j for j, b in enumerate(bank["attrs"]) if b.items() >= named.items()]


def diversity_rows(a, pipe, held, priors: list) -> list:
    """[unCLIP] Sec. 2.2: does each prior (label, model) sample the variety a loose caption leaves
    open? Per prior, best-of-c and best-of-1: the spread of k samples of "a <colour> <shape>"
    against real renders' (the data's), retrieval and z_i cos on held-out captions, and the accuracy
    of the whole stack decoding its samples. The exact denoiser of the bank is the sampler's ceiling."""
    bank, z_bank, nearest = retrieval_bank(a, pipe)
    (free, free_real), k, c = free_captions(a), a.per_caption, a.sampling["candidates"]
    z_true = pipe.clip.encode_image(held["images"][32])
    row = functools.partial(embedding_row, z_true=z_true, named=held["named"], nearest=nearest, k=k)
    rows = [row("real renders (the data)", z_true, z_free=pipe.clip.encode_image(free_real))]
    # a caption no bank render matches (a small --bank) keeps the render nearest its own truth
    points = lambda named, near: [z_bank[matching(bank, n) or [j]] for n, j in zip(named, near, strict=True)]
    near_free = (pipe.clip.encode_image(free_real[::k]) @ z_bank.T).argmax(1).tolist()
    steps, clock = a.sampling["prior_steps"], time.perf_counter()
    exact = functools.partial(exact_prior_samples, pipe.prior.diffusion, steps=steps, seed=a.seed)
    rows.append(row(f"exact denoiser of the bank's renders, {steps} steps",
                    exact(points(held["named"], (z_true @ z_bank.T).argmax(1).tolist()), 1),
                    z_free=exact(points([toy_data.parse_caption(y) for y in free], near_free), k))
                | {"seconds": time.perf_counter() - clock})
    for (label, prior), n in itertools.product(priors, dict.fromkeys((c, 1))):
        clock = time.perf_counter()
        r = row(f"{label}, best of {n}", sample_prior(a, pipe, prior, held["caption"], 1, n),
                z_free=sample_prior(a, pipe, prior, free, k, n))
        stack = timed("", unclip.UnCLIP(pipe.clip, prior, pipe.decoder), held["caption"], held["named"],
                      held["images"][32], a, candidates=n)
        rows.append(r | {"stack all": stack["all"], "seconds": time.perf_counter() - clock})
    for r in rows:
        r["spread / data"] = r["z_i spread"] / rows[0]["z_i spread"]
    return rows


def decoder_rows(a, pipe, held) -> list:
    """Decode the TRUE z_i of real renders with their caption (as the pipeline does) at
    each decoder guidance scale of --scales, and without the caption: does the image keep the
    render's five attributes, and does guidance raise the CLIP score?"""
    x, captions, g0 = held["images"][32], held["caption"], a.sampling["decoder_guidance"]
    z_i, text = pipe.clip.encode_image(x), trim_padding(*pipe.clip.tokenize(captions))
    with_text = [(f"true z_i and the caption, s={s:g}", text, s) for s in sorted({*a.scales, g0})]
    without = [(f"true z_i, no caption, s={g0:g}", (None, None), g0)]
    rows = [real_row(pipe, captions, held["attrs"], x)]
    for label, text, s in (with_text + without) if pipe.decoder.cfg.text_layers else without:
        clock = time.perf_counter()
        row = score(pipe, decode_true(a, pipe.decoder, z_i, text, s), captions, held["attrs"], x)
        rows.append({"row": label} | row | {"z_i cos": F.cosine_similarity(row["_z"], z_i).mean().item(),
                                            "seconds": time.perf_counter() - clock})
    return versus_unguided(rows, "true z_i and the caption, s=1")


def decode_true(a, decoder, z_i, text, s) -> torch.Tensor:
    """The decoder's images of the true z_i [B, D] and (tokens, mask) at guidance s, one seed an image."""
    gens = [torch.Generator().manual_seed(a.seed + j) for j in range(len(z_i))]
    return decoder.sample(z_i, *text, steps=a.sampling["decoder_steps"], generator=gens,
                          guidance_scale=s).clamp(-1, 1)


def recipe_rows(a, pipe, held, name: str, folder: Path) -> list:
    """A decoder recipe's EMA weights at each snapshot (folder/decoder_<step>.pt, then the final
    decoder.pt) decoding the true z_i of held-out renders with their caption at the run's guidance:
    attribute accuracy against the training seconds spent to reach that step."""
    x, captions = held["images"][32], held["caption"]
    z_i, text = pipe.clip.encode_image(x), trim_padding(*pipe.clip.tokenize(captions))
    points = {}
    for path in [*sorted(folder.glob("decoder_*.pt")), folder / "decoder.pt"]:
        ck = torch.load(path, weights_only=True)
        info = ck.get("train", ck)  # a snapshot holds step and seconds itself
        points.setdefault(info["step"], (path, info.get("seconds")))
    rows = []
    for step, (path, seconds) in sorted(points.items()):
        decoder = Decoder.load(path, map_location=a.device).eval()
        out = decode_true(a, decoder, z_i, text if decoder.cfg.text_layers else (None, None),
                          a.sampling["decoder_guidance"])
        rows.append({"row": f"{name}, step {step}", "step": step, "train seconds": seconds}
                    | score(pipe, out, captions, held["attrs"], x))
    return rows


def upsampler_rows(a, pipe, held) -> list:
    """Each upsampler on true low-res renders vs bicubic (the upsampler's own input):
    PSNR and L1 against the true high-res render, and "same reading" = the fraction the Evaluator
    reads as it reads the input. Grids OUT/components_up<i>.png: low-res / bicubic / up<i> / truth."""
    rows, m = [], max(1, a.n // 2)
    for i, up in enumerate(pipe.upsamplers, 1):
        lo, hi = (held["images"][s][:m].to(pipe.clip.device) for s in (up.cfg.low_res, up.cfg.high_res))
        H, steps = hi.shape[-1], (a.up_steps[i - 1:i] or [up.cfg.sample_steps])[0]
        clock, gens = time.perf_counter(), [torch.Generator().manual_seed(a.seed + j) for j in range(m)]
        out = {"bicubic": resize(lo, H), f"up{i}, {steps} DDIM steps": up.sample(lo, steps, generator=gens)}
        seconds = time.perf_counter() - clock
        for label, x in out.items():
            same = [r == w for r, w in zip(evaluator().read(x), evaluator().read(lo), strict=True)]
            rows.append({"row": f"{lo.shape[-1]}->{H}: {label}", "PSNR": metrics.psnr(x, hi).mean().item(),
                         "L1": (x - hi).abs().mean().item(), "same reading": sum(same) / m})
        rows[-1]["seconds"] = seconds
        shown = torch.cat([v[:8].cpu() for v in (resize(lo, H, "nearest"), *out.values(), hi)])
        labels = [w for w in ("low-res", "bicubic", f"up{i}", "truth") for _ in range(min(8, m))]
        metrics.save_grid(shown, labels, a.out / f"components_up{i}.png", ncol=min(8, m))
    return rows
