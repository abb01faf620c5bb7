"""The paper's experiments on the trained toy stack, one command each, and each module measured
on its own (EXPERIMENTS.md holds the tables of the default run and of a second recipe).

    python experiments.py prior    --run runs/toy  # [unCLIP] 5.1: diffusion/AR prior, z_t, caption only
    python experiments.py variance --run runs/toy  # [IDDPM]: learned vs fixed Sigma, bits/dim, 10-250 steps
    python experiments.py guidance --run runs/toy  # [CFG] [GLIDE]: decoder guidance 1 ... 8, prior guidance
    python experiments.py diversity --run runs/toy  # [unCLIP] 2.2: prior samples vary as the data does
    python experiments.py binding  --run runs/toy  # [unCLIP] Sec. 7: colours bound to shapes, two objects
    python experiments.py holdout  --run runs/toy  # compositional generalization to held-out pairs
    python experiments.py recipes  --run runs/toy  # decoder recipes: accuracy from true z_i vs seconds
    python experiments.py curves   --run runs/toy  # each stage's training loss against its steps
    python experiments.py components --run runs/toy  # CLIP, prior, decoder from true z_i at s = 1 ... 8, ups
    python experiments.py all      --run runs/toy  # the nine, one after the other

Each reads the stage files train_toy.py wrote to --run, samples fresh Shapes captions at the
decoder's 32x32 (the Evaluator reads 32x32; only components runs the upsamplers), and writes
<name>.md and <name>.json to --out (default RUN/experiments) with the seed, the settings, the
machine and the wall time. prior, variance, diversity, binding and recipes compare with stages the
run lacks (an AR prior, a fixed-variance, caption-only or other-recipe decoder, other priors):
train_toy.py trains each under the run's saved config into RUN/exp_*, beside a copy of clip.pt, so
the run's own files are never touched; a finished sub-folder is reused.

Symbols and names
    y, named   a caption and the attributes it names (toy_data.parse_caption)
    z_t, z_i   unit CLIP text / image embeddings [B, D]; "z_i cos" = cos(z_i used, z_i of the real
               render of the caption's scene), the prior's accuracy as in [unCLIP] Sec. 5.1; for
               components' decoder: cos(z_i of the decoded image, the true z_i it was given)
    k          images per caption (guidance: diversity is measured within a caption's k images)
    s          classifier-free guidance scale [CFG] Eq. 6 (1 = no guidance)
    FD_CLIP    Frechet distance of CLIP image embeddings, generated vs real renders of the scenes
    CLIP score - s=1, paired SE   per image, CLIP score minus its own at guidance 1, averaged; its SE
    bank       fresh real renders whose z_i the prior's samples are matched to (nearest by cos)
    PSNR       10 log10(1 / MSE) in dB on the [0, 1] pixel scale, per image, then averaged
"""

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import torch

import metrics
import scoring
import toy_data
import train_config
import train_toy
import unclip
from decoder import Decoder
from prior import ARPrior, DiffusionPrior
from scoring import (
    BANK_SEED,
    Settings,
    along,
    binding,
    bits_per_dim,
    curve_rows,
    decoder_rows,
    diversity,
    diversity_rows,
    free_captions,
    only_pair,
    prior_rows,
    real_row,
    scenes,
    shapes_batch,
    timed,
    upsampler_rows,
    versus_unguided,
    zero_shot,
)
from toy_data import ATTRIBUTES, EVAL_SEED, PAIR_ATTRIBUTES

DEFAULT_N = {"variance": 32}  # images per row; variance samples 2 x 435 decoder steps per image


# ----------------------------------------------------------------------------- extra stages
def train_extra(a, cfg: dict, sub: str, file: str, options: list, steps: int | None = None) -> Path:
    """RUN/sub/<file>.pt (file: prior, ar_prior or decoder) trained by train_toy.py under the run's
    config + `options` for `steps` (default --train-steps, else the run's own); reused once done."""
    folder, opt = a.run / sub, f"opt_{file}"
    path = folder / f"{file}.pt"
    if not cfg:
        raise SystemExit(f"training {path} needs the run's config, saved in {a.run}/report.json when the "
                         f"run finishes; finish it with python train_toy.py --out {a.run} --resume")
    own = cfg[opt]["steps"] if opt in cfg else getattr(train_config.Config(), opt).steps
    steps = steps or a.train_steps or own
    if path.exists() and torch.load(path, weights_only=True).get("train", {}).get("step", steps) >= steps:
        return path  # finished (a file without training state counts as finished)
    folder.mkdir(exist_ok=True)
    clip = folder / "clip.pt"
    if clip.exists() and clip.read_bytes() != (a.run / "clip.pt").read_bytes():
        raise SystemExit(f"{clip} differs from {a.run}/clip.pt: {folder} belongs to an earlier "
                         "CLIP. Delete the folder and run again")
    shutil.copyfile(a.run / "clip.pt", clip)
    print(f"training {path} ({steps} steps) with train_toy.py", flush=True)
    train_toy.main(train_config.config_args(cfg) + options + ["--out", str(folder), "--resume",
                                                 "--device", a.device, f"--{opt}.steps", str(steps)])
    return path


# ----------------------------------------------------------------------------- the experiments
def exp_prior(a, pipe, cfg) -> tuple:
    """[unCLIP] Sec. 5.1: where z_i comes from, with the decoder fixed. -> (rows, note)"""
    if not (a.run / "prior.pt").exists():
        raise SystemExit(f"prior compares with the diffusion prior {a.run}/prior.pt; train it with "
                         f"python train_toy.py --out {a.run} --stages prior --resume")
    ar_pipe = unclip.UnCLIP(pipe.clip, ARPrior.load(path := ar_prior_path(a, cfg), a.device), pipe.decoder)
    data = scenes(a.n, a.seed + EVAL_SEED, a.holdout)
    return [real_row(pipe, *data),
            timed("(a) diffusion prior", pipe, *data, a),
            timed("(b) AR prior", ar_pipe, *data, a),
            timed("(c) z_t as z_i, no prior (zero-shot)", pipe, *data, a, embedding="text"),
            timed("(d) caption only, no z_i", pipe, *data, a, embedding="none")], f"AR prior {path}"


def ar_prior_path(a, cfg) -> Path:
    """The run's AR prior, or one trained under its config into RUN/exp_ar_prior."""
    path = a.run / "ar_prior.pt"
    return path if path.exists() else train_extra(a, cfg, "exp_ar_prior", "ar_prior",
                                                  ["--stages", "prior", "--prior_kind", "ar"])


def exp_diversity(a, pipe, cfg) -> tuple:
    """[unCLIP] Sec. 2.2: do the samples vary as the data does? The run's prior, --prior-recipes, AR."""
    if not isinstance(pipe.prior, DiffusionPrior):
        raise SystemExit(f"diversity needs {a.run}/prior.pt; train it with python train_toy.py "
                         f"--out {a.run} --stages prior --resume")
    own = cfg.get("opt_prior") or vars(train_config.Config().opt_prior)
    own, priors = (own["steps"], own["lr"]), []
    for steps, lr in sorted({own, *a.prior_recipes}, key=lambda r: (r[1], r[0])):
        options = ["--stages", "prior", "--prior_kind", "diffusion", "--opt_prior.lr", str(lr)]
        path = (a.run / "prior.pt" if (steps, lr) == own
                else train_extra(a, cfg, f"exp_prior_{steps}x{lr:g}", "prior", options, steps))
        priors.append((f"diffusion prior, {steps} steps at lr {lr:g}" + " (the run's)" * ((steps, lr) == own),
                       DiffusionPrior.load(path, map_location=a.device), steps, lr))
    labelled = [p[:2] for p in priors] + [("AR prior", ARPrior.load(ar_prior_path(a, cfg), a.device))]
    rows = diversity_rows(a, pipe, shapes_batch(a.n, a.seed + EVAL_SEED, a.holdout), labelled)
    best, panels, xs = list(dict.fromkeys((a.sampling["candidates"], 1))), [], sorted(p[2] for p in priors)
    for j, n in enumerate(best):  # a panel per candidate count; rows: data, exact, then each prior's
        series = {"exact denoiser": [(x, rows[1]["spread / data"]) for x in (xs[0], xs[-1])]}
        block = rows[2 + j:2 + len(best) * len(priors):len(best)]  # this count's row of each diffusion prior
        for (_, _, steps, lr), r in zip(priors, block, strict=True):
            series.setdefault(f"lr {lr:g}", []).append((steps, r["spread / data"]))
        panels.append({"title": f"diffusion prior, best of {n}", "x": "prior training steps",
                       "y": "z_i spread / the data's", "log_x": True, "series": series})
    chart(a, "diversity", panels)
    return rows, (f"spread among {a.per_caption} samples of each of {max(2, a.n // a.per_caption)} captions "
                  f"'a <colour> <shape>'; retrieval, z_i cos and stack all (the decoder's images of those "
                  f"z_i) on the {a.n} scenes; bank {a.bank} renders, seed {a.seed + BANK_SEED}")


def exp_variance(a, pipe, cfg) -> tuple:
    """[IDDPM] Sec. 3.1, 4, Tables 1-2: learned-range vs fixed (beta~_t) variance: the full L_vlb in
    bits/dim on real renders, and quality under fewer sampling steps."""
    path = train_extra(a, cfg, "exp_fixed_var", "decoder", [
        "--stages", "decoder", "--decoder.learn_sigma", "false", "--decoder.out_channels", "3"])
    fixed, data = Decoder.load(path, map_location=a.device), scenes(a.n, a.seed + EVAL_SEED, a.holdout)
    rows, nll, by_name = [real_row(pipe, *data)], [], {}
    for decoder in (pipe.decoder, fixed):
        name, clock = "learned-range" if decoder.cfg.learn_sigma else "fixed", time.perf_counter()
        bits = bits_per_dim(decoder, pipe.clip, data[0], data[2], a.nll_stride, a.seed)
        nll.append({"row": f"{name} variance", "bits/dim": bits, "seconds": time.perf_counter() - clock})
        variant = unclip.UnCLIP(pipe.clip, pipe.prior, decoder)
        by_name[name] = [timed(f"{name} variance, {s} steps", variant, *data, a, decoder_steps=s)
                         for s in a.steps]
        rows += by_name[name]
    chart(a, "variance", [{"title": f"{k} against sampling steps", "x": "decoder steps (ancestral)", "y": k,
                           "log_x": True, "series": {n: along(a.steps, r, k) for n, r in by_name.items()}}
                          for k in ("all", "FD_CLIP")])
    k = a.nll_stride
    every = "every t" if k == 1 else f"one t in {k} (a random offset), weighed {k},"
    return {"Log-likelihood: the full L_vlb on real renders": nll, "Sampling with fewer steps": rows}, (
        f"bits/dim from {every} of the {pipe.decoder.cfg.timesteps} steps; ancestral sampling at each row's "
        f"steps; fixed-variance decoder {path}")


def exp_guidance(a, pipe, cfg) -> tuple:
    """[CFG] [GLIDE] Sec. 3: decoder guidance trades diversity for fidelity; prior guidance."""
    k, (captions, real) = a.per_caption, free_captions(a)
    named = [toy_data.parse_caption(c) for c in captions for _ in range(k)]  # colour and shape
    reference = real_row(pipe, [c for c in captions for _ in range(k)], named, real)
    rows = [reference | diversity(reference["_z"], reference["_reads"], k)]
    g0, p = a.sampling["decoder_guidance"], a.prior_guidance
    scales = sorted({*a.scales, g0})  # g0 also anchors the prior-guidance pair
    rows += [timed(f"decoder s={s:g}, prior s=1", pipe, captions, named, real, a, k=k, decoder_guidance=s)
             for s in scales]
    row = timed(f"decoder s={g0:g}, prior s={p:g}", pipe, captions, named, real, a, k=k, prior_guidance=p)
    ends = [scales[0], scales[-1]]
    chart(a, "guidance", [{"title": f"{key} against decoder guidance", "x": "decoder scale s", "y": key,
                           "series": {"prior s=1": along(scales, rows[1:], key), f"prior s={p:g}": along(
                               [g0], [row], key)} | ({"real renders": along(ends, [rows[0]] * 2, key)}
                                                     if key in rows[0] else {})}
                          for key in ("CLIP score", "FD_CLIP", "z_i spread")])
    return versus_unguided(rows + [row], "decoder s=1, prior s=1"), (
        f"{k} images for each of {len(captions)} captions: {', '.join(captions)}")


def exp_binding(a, pipe, cfg) -> tuple:
    """[unCLIP] Sec. 7: two-object captions decoded from the prior's z_i (unCLIP), and by a decoder of
    equal cost that sees the caption alone ([GLIDE]'s setting), against one-object captions."""
    path = train_extra(a, cfg, "exp_text_decoder", "decoder", [  # GLIDE drops the caption 20% of the time
        "--stages", "decoder", "--decoder.p_drop_image", "1", "--decoder.p_drop_text", "0.2"])
    glide = unclip.UnCLIP(pipe.clip, pipe.prior, Decoder.load(path, map_location=a.device))
    one, two = (scenes(a.n, a.seed + EVAL_SEED, a.holdout, two_objects=t) for t in (False, True))
    rows, images, labels = [real_row(pipe, *two, pair=True)], [two[2][:8]], list(two[0][:8])
    rows[0] |= binding(rows[0]["_reads"], two[1])
    for name, variant, kw in (("unCLIP: prior z_i and caption", pipe, {}),
                              ("caption only (GLIDE)", glide, {"embedding": "none"})):
        single, double = (timed(f"{name}, {n} object{'s' * t}", variant, *data, a, pair=t, **kw)
                          for n, t, data in (("one", False, one), ("two", True, two)))
        right = [r["colour"] == n["colour"] and r["shape"] == n["shape"]
                 for r, n in zip(single["_reads"], one[1], strict=True)]
        single["colour+shape"] = p = sum(right) / len(right)
        double |= binding(double["_reads"], two[1]) | {"bound if independent": p * p}
        rows += [single, double]
        images.append(double["_images"][:8].cpu())
        labels += [f"{name.split(':')[0]} drew {r['left_colour']} {r['left_shape']}, {r['right_colour']} "
                   f"{r['right_shape']}" for r in double["_reads"][:8]]
    metrics.save_grid(torch.cat(images), labels, a.out / "binding.png", ncol=len(labels) // 3)
    dropped = {"size", "position", "left_size", "right_size"}  # not the point here
    return [{k: v for k, v in r.items() if k not in dropped} for r in rows], (
        f"{cfg.get('two_objects', 0):.0%} of the training scenes had two objects; caption-only decoder "
        f"{path}: the run's decoder trained with z_i always dropped; grid: real renders, then each decoder's")


def exp_holdout(a, pipe, cfg) -> tuple:
    """Compositional generalization: (colour, shape) pairs never rendered in training vs seen pairs."""
    if not (pairs := a.holdout):
        raise SystemExit(f"holdout: {a.run} holds out no (colour, shape) pair; train a run with "
                         "python train_toy.py --holdout 'purple triangle' (or pass --holdout)")
    seen = scenes(a.n, a.seed + EVAL_SEED, pairs)
    m = math.ceil(a.n / len(pairs))  # scenes of each held-out pair
    parts = [only_pair(p, m, a.seed + EVAL_SEED + 1 + j) for j, p in enumerate(pairs)]
    captions, named, real = zip(*parts, strict=True)
    held = sum(captions, []), sum(named, []), torch.cat(real)
    rows = [real_row(pipe, *held, label="real renders of held-out pairs (reference)"),
            timed("seen pairs", pipe, *seen, a),
            timed("held-out pairs", pipe, *held, a),
            timed("held-out pairs, z_t as z_i (no prior)", pipe, *held, a, embedding="text")]
    for row, (_, named, _) in zip(rows, (held, seen, held, held), strict=True):
        reads = [f"{r['colour']} {r['shape']}" for r in row["_reads"]]
        want = [f"{n['colour']} {n['shape']}" for n in named]
        row["colour+shape"] = sum(map(str.__eq__, reads, want)) / len(reads)
        (top, count), = Counter(reads).most_common(1)
        row["most read as"] = f"{top} ({count / len(reads):.0%})"
    return rows, "CLIP, prior and decoder all trained without the held-out pairs"


# decoder recipes: sub-folder -> (label, options over the run's config, share of the run's steps). eps, v
# and x0 prediction weigh the error in x_0 over t by SNR, 1 + SNR and 1 ([PD] Sec. 4); twice the run's
# batch for half the steps sees as many examples
DECODER_RECIPES = {"own": ("the run's recipe", [], 1),
                   "eps": ("eps prediction", ["--decoder.mean_type", "eps"], 1),
                   "x0": ("x0 prediction", ["--decoder.mean_type", "x0"], 1)}


def exp_recipes(a, pipe, cfg) -> tuple:
    """Decoder recipes judged by accuracy from the true z_i against training seconds: each trained anew
    under the run's config, its EMA weights kept every ckpt_every multiple nearest a sixth of its steps."""
    held, every = shapes_batch(a.n, a.seed + EVAL_SEED, a.holdout), cfg.get("ckpt_every", 500)
    own = a.train_steps or cfg.get("opt_decoder", {}).get("steps", 1)
    batch = 2 * cfg.get("opt_decoder", vars(train_config.Config().opt_decoder))["batch"]
    recipes = {**DECODER_RECIPES,
               f"batch{batch}": (f"batch {batch}, half the steps", ["--opt_decoder.batch", str(batch)], 0.5)}
    rows, series = [], {}
    for key, (label, options, share) in recipes.items():
        steps = max(1, round(share * own))
        snapshot = every * max(1, round(steps / 6 / every))
        path = train_extra(a, cfg, f"exp_recipe_{key}", "decoder", [
            "--stages", "decoder", "--snapshot_every", str(snapshot), *options], steps)
        rows += (part := scoring.recipe_rows(a, pipe, held, label, path.parent))
        series[label] = [(r["train seconds"], r["all"]) for r in part]
    chart(a, "recipes", [{"title": "decoder from the true z_i", "x": "training seconds", "y": "all right",
                          "series": series}])
    return rows, (f"each recipe's decoder trained anew in RUN/exp_recipe_*; decoder guidance "
                  f"{a.sampling['decoder_guidance']:g}, {a.sampling['decoder_steps']} steps; train seconds: "
                  "its training's wall time to that step, previews included")


def exp_curves(a, pipe, cfg) -> tuple:
    """Training curves: each stage's loss against its steps, from the loss history in its checkpoint."""
    rows, panels = curve_rows(a.run)
    if not rows:
        raise SystemExit(f"{a.run} holds no stage checkpoint with a loss history")
    chart(a, "curves", panels)
    return rows, "per-step losses averaged over windows of len // 200 steps (at least 1); seconds: report"


def chart(a, name: str, panels: list) -> None:  # OUT/<name>.png, the table as line charts
    metrics.save_charts(panels, a.out / f"{name}.png")


def exp_components(a, pipe, cfg) -> tuple:
    """Each module on its own, on held-out scenes. -> ({table title: rows}, note)"""
    held = shapes_batch(a.n, a.seed + EVAL_SEED, a.holdout,
                        sizes=sorted({32, *(up.cfg.high_res for up in pipe.upsamplers)}))
    clock = time.perf_counter()
    clip = {"row": "argmax cos over captions that differ only in the attribute"} | zero_shot(
        pipe.clip.encode_text, pipe.clip.encode_image(held["images"][32]), held["attrs"])
    tables = {"CLIP zero-shot, per attribute": [clip | {"seconds": time.perf_counter() - clock}],
              "Prior": prior_rows(a, pipe, held),
              "Decoder from the true z_i": decoder_rows(a, pipe, held)}
    if pipe.upsamplers:
        tables["Upsamplers on true low-res renders"] = upsampler_rows(a, pipe, held)
    return tables, (f"bank (retrieval, mean z_i): {a.bank} renders, Shapes seed {a.seed + BANK_SEED}; "
                    f"variety: {a.per_caption} samples for each of {max(2, a.n // a.per_caption)} captions "
                    f"'a <colour> <shape>'; upsamplers: {max(1, a.n // 2)} scenes, up_steps {a.up_steps}"
                    + ("" if pipe.upsamplers else " (the run has no up1.pt: skipped)"))


# ----------------------------------------------------------------------------- tables and CLI
ORDER = ("row", "all", *ATTRIBUTES, *PAIR_ATTRIBUTES, "colour+shape", "CLIP score", "CLIP score - s=1",
         "paired SE", "FD_CLIP", "z_i cos")
FORMATS = {"seconds": "{:.1f}", "CLIP score - s=1": "{:+.4f}", "paired SE": "{:.4f}"}  # else {:.3f}
EXPERIMENTS = {  # name: (title, the function that measures it -> (rows or {title: rows}, note))
    "prior": ("Prior ablation [unCLIP] Sec. 5.1", exp_prior),
    "variance": ("Learned variance: bits/dim and few steps [IDDPM]", exp_variance),
    "guidance": ("Guidance trade-off [CFG] [GLIDE]", exp_guidance),
    "diversity": ("Prior diversity [unCLIP] Sec. 2.2", exp_diversity),
    "binding": ("Attribute binding [unCLIP] Sec. 7", exp_binding),
    "holdout": ("Compositional generalization (held-out pairs)", exp_holdout),
    "recipes": ("Decoder recipes: accuracy against training seconds", exp_recipes),
    "curves": ("Training curves", exp_curves),
    "components": ("Each module on its own: CLIP, prior, decoder, upsamplers", exp_components)}


def run(name: str, a, pipe, cfg) -> dict:
    """One experiment -> OUT/name.md and OUT/name.json; returns the JSON record."""
    clock = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    title, measure = EXPERIMENTS[name]
    tables, note = measure(a, pipe, cfg)  # one table's rows, or {title: rows}
    tables = {t: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
              for t, rows in (tables if isinstance(tables, dict) else {"": tables}).items()}
    prior = "diffusion" if isinstance(pipe.prior, DiffusionPrior) else "AR"
    settings = (f"n {a.n} images a row at {pipe.image_size}x{pipe.image_size}; {prior} prior, "
                + ", ".join(f"{k} {v}" for k, v in a.sampling.items())
                + f"; scenes: Shapes seed {a.seed + EVAL_SEED}; held-out pairs "
                + f"{', '.join(map(' '.join, a.holdout)) or 'none'}; run {a.run} (trained with seed "
                + f"{cfg.get('seed', '?')}); {note}")
    record = {"experiment": name, "command": shlex.join(["python", "experiments.py", name, *a.argv]),
              "seed": a.seed, "settings": settings, "machine": metrics.machine(a.device),
              "seconds": round(time.perf_counter() - clock, 1)}
    record |= {"rows": tables[""]} if "" in tables else {"tables": tables}
    text = (f"### {title}\n\n    {record['command']}\n\nseed {a.seed}; {settings}.  \n"
            f"machine: {record['machine']}; wall time {record['seconds']:.0f} s\n\n"
            + "\n\n".join((f"#### {t}\n\n" if t else "") + metrics.markdown_table(r, ORDER, FORMATS)
                            for t, r in tables.items()) + "\n")
    for suffix, body in ((".md", text), (".json", json.dumps(record, indent=2, default=str))):
        metrics.save_atomic_text(a.out / f"{name}{suffix}", body)
    print(text, flush=True)
    return record


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=(*EXPERIMENTS, "all"))
    p.add_argument("--run", type=Path, default=Path("runs/toy"), help="train_toy.py run folder")
    p.add_argument("--out", type=Path, help="where tables go (default RUN/experiments)")
    p.add_argument("--n", type=int, help="images per row (default 64; variance 32)")
    p.add_argument("--seed", type=int, default=0, help=f"sampling seed; scenes use seed + {EVAL_SEED}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--prior-steps", type=int, help="default: the run's sampling config")
    p.add_argument("--decoder-steps", type=int, help="default: the run's sampling config")
    p.add_argument("--guidance", type=float, help="decoder guidance (default: the run's config)")
    p.add_argument("--steps", default="10,25,50,100,250", help="variance: decoder step counts")
    p.add_argument("--scales", default="1,1.5,2,3,4,6,8", help="guidance, components: decoder scales")
    p.add_argument("--nll-stride", type=int, default=1, help="variance: bits/dim from one t in k (1: all)")
    p.add_argument("--per-caption", type=int, default=8, help="guidance: images per caption, k")
    p.add_argument("--prior-guidance", type=float, default=3.0, help="guidance: prior scale when on")
    # Shapes has 6 x 4 x 2 x 9 x 3 = 1296 attribute combinations: a bank of n random renders
    # lacks a given one with probability ~exp(-n / 1296), 21% for 2000, 0.05% for 10000, and
    # retrieval cannot read right what the bank lacks
    p.add_argument("--bank", type=int, default=10000, help="components, diversity: real renders the "
                   "prior's samples are matched to")
    p.add_argument("--holdout", default="", help="pairs held out, e.g. 'purple triangle' (default: "
                   "the run's report.json; give it only for a run without one)")
    p.add_argument("--prior-recipes", default="1200x0.001,3000x0.003,6000x0.001",
                   help="diversity: diffusion priors to train, STEPSxLR, beside the run's own")
    p.add_argument("--train-steps", type=int, help="steps of the AR prior, or of the fixed-variance, "
                   "caption-only or recipes' decoders an experiment trains when missing (default: the run's)")
    return p


def settings(argv: list) -> tuple:
    """(Settings, the run's saved config or {}) from the command line, every check before any work."""
    p = parser().parse_args(argv)
    metrics.reuse_freed_memory()  # as train_toy's runs
    auto = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    steps, scales = scoring.numbers(p.steps), scoring.numbers(p.scales, float)
    low = [(p.n, 2), (p.per_caption, 2), (p.bank, 1), (p.nll_stride, 1), (p.prior_steps, 2),
           (p.decoder_steps, 2), (p.train_steps, 1), (p.threads, 1), *((s, 2) for s in steps or [0])]
    if any(v is not None and v < n for v, n in low) or not all(map(math.isfinite, scales or [math.nan])):
        raise SystemExit("need --n, --per-caption (FD_CLIP, diversity), --steps, --prior-steps and "
                         "--decoder-steps >= 2; --bank, --nll-stride, --train-steps and --threads >= 1; "
                         "finite --scales")
    if p.threads:
        torch.set_num_threads(p.threads)
    if not p.run.is_dir():
        raise SystemExit(f"no run folder {p.run}; train one with: python train_toy.py --out {p.run}")
    report = p.run / "report.json"
    cfg = json.loads(report.read_text()).get("config", {}) if report.exists() else {}
    if p.holdout and cfg and scoring.parse_pairs(p.holdout) != scoring.parse_pairs(cfg.get("holdout", "")):
        print(f"warning: {p.run} was trained holding out {cfg.get('holdout') or 'nothing'!r}; "
              f"--holdout {p.holdout!r} replaces that in every table", file=sys.stderr)
    base = {k: cfg.get("sampling", {}).get(k, v) for k, v in vars(train_config.Sampling()).items()}
    sampling = {"prior_steps": p.prior_steps or base["prior_steps"], "candidates": base["candidates"],
                "decoder_steps": p.decoder_steps or base["decoder_steps"],
                "decoder_guidance": base["guidance"] if p.guidance is None else p.guidance}
    at, holdout = argv.index(p.experiment), scoring.parse_pairs(p.holdout or cfg.get("holdout", ""))
    given = {f.name: getattr(p, f.name) for f in fields(Settings) if f.name in p}  # as parsed
    return Settings(**given | dict(
        argv=argv[:at] + argv[at + 1:], out=p.out or p.run / "experiments", steps=steps, scales=scales,
        device=auto if p.device == "auto" else p.device, sampling=sampling, up_steps=list(base["up_steps"]),
        holdout=holdout, prior_recipes=scoring.step_lr_pairs(p.prior_recipes))), cfg


def main(argv=None) -> list:
    a, cfg = settings(list(sys.argv[1:] if argv is None else argv))
    try:
        pipe = unclip.from_stage_checkpoints(a.run, device=a.device)
    except FileNotFoundError as e:
        raise SystemExit(f"{e}; train the run with python train_toy.py --out {a.run}") from None
    if pipe.prior is None:
        raise SystemExit(f"{a.run} has no prior.pt or ar_prior.pt; train one with "
                         f"python train_toy.py --out {a.run} --stages prior --resume")
    if pipe.image_size != 32:  # the real renders, the toy CLIP and the Evaluator are at 32x32
        raise SystemExit(f"the experiments read 32x32 decoder images; {a.run} decodes at "
                         f"{pipe.image_size}x{pipe.image_size}")
    records = []
    for name in EXPERIMENTS if a.experiment == "all" else (a.experiment,):
        try:
            records.append(run(name, replace(a, n=a.n or DEFAULT_N.get(name, 64)), pipe, cfg))
        except SystemExit as e:  # all: one experiment this run cannot do does not stop the others
            if a.experiment != "all":
                raise
            print(f"{name}: skipped: {e}", file=sys.stderr, flush=True)
    return records


if __name__ == "__main__":
    main()
