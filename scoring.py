"""How the experiments score a pipeline on Shapes: fresh scenes the training never rendered, the
Evaluator's attribute accuracy, CLIP score and FD_CLIP (as train_toy.evaluate computes them), the
variety among a caption's samples, two-object binding, CLIP's zero-shot reading, and one timed row
of an experiment's table. experiments.py builds its tables from these.

Symbols and names
    y, named   a caption and the attributes it names (toy_data.parse_caption)
    z_t, z_i   unit CLIP text / image embeddings [B, D]
    k          images per caption (diversity is measured within a caption's k images)
    a          the experiments' settings: seed, n, per_caption, holdout, sampling
"""

import functools
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

import metrics
import toy_data
from toy_data import ATTRIBUTES, EVAL_SEED, PAIR_ATTRIBUTES, allowed_pairs

BANK_SEED = 104_729  # the retrieval bank: fresh renders, neither training nor evaluation scenes
VALUES = {a: getattr(toy_data, f"{a.upper()}S") for a in ATTRIBUTES}  # colour -> COLOURS, ...
UNNAMED = ("size", "position", "background")  # what "a red circle" leaves free
evaluator = functools.cache(toy_data.Evaluator)  # one Evaluator: rule-based, shares nothing with CLIP


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


def score(pipe, images, captions, named, real, z_i=None, pair=False) -> dict:
    """Attribute accuracy (Evaluator), CLIP score and FD_CLIP as train_toy.evaluate computes them, one
    caption, named dict and real render per image; plus "z_i cos" when the row used an embedding."""
    reads = (evaluator().read_pair if pair else evaluator().read)(images.cpu())
    z_t = pipe.clip.encode_text(captions)[0]
    z_gen, z_real = (pipe.clip.encode_image(x.to(pipe.clip.device)) for x in (images, real))
    row = accuracy(reads, named) | {"CLIP score": metrics.clip_score(z_gen, z_t),
                                    "FD_CLIP": metrics.frechet_distance(z_gen, z_real)}
    if z_i is not None:
        row["z_i cos"] = F.cosine_similarity(z_i, z_real).mean().item()
    cos = F.cosine_similarity(z_gen.double(), z_t.double(), dim=1)  # each image's CLIP score
    return row | {"_reads": reads, "_z": z_gen, "_cos": cos}


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
    spread = (1 - z @ z.transpose(1, 2))[:, ~torch.eye(k, dtype=torch.bool)].mean().item()
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
    return {"row": label} | row | {"seconds": time.perf_counter() - clock}
