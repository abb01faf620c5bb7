"""Train the whole unCLIP stack on Shapes, then measure how good it is.

    python train_toy.py                        # the default run -> runs/toy/ (report.md, *.png)
    python train_toy.py --quick                # every stage end to end in about 2 minutes
    python train_toy.py --stages decoder,up1 --resume
    python train_toy.py --decoder.channels 24 --opt_decoder.steps 4000
    python train_toy.py --data fashion_mnist:/usr/share/datasets/fashion-mnist   # or cifar10:, folder:
    torchrun --nproc_per_node=2 train_toy.py   # DistributedDataParallel, as nanoGPT does it

Stages run in the paper's order [unCLIP] Sec. 2: CLIP (frozen afterwards) -> prior -> decoder -> upsampler 1
-> upsampler 2; each later stage reads the frozen results of the earlier ones from the run folder. Every
stage checkpoint is {"config", "state_dict" (EMA weights), "train" (raw weights, optimizer, step, loss
history, RNG, training seconds, the options and CLIP it trained under)} written atomically, so `--resume`
continues a killed run and a failed run never destroys a good checkpoint. The end writes unclip.pt (the
one-file pipeline for unclip.py) and report.json / report.md with the metrics (attribute accuracy, CLIP
score, FD_CLIP, prior cosine; on labelled real data class accuracy and FD by a classifier of the training
split, on its held-out split). The options, their defaults and their checks are in train_config.py.
"""

import contextlib
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import diffusion
import metrics
import real_data
import scoring
import toy_data
import train_config
import unclip
from clip_frozen import FrozenCLIP, load_clip, make_tokenizer, tokenizer_kind
from metrics import clip_score, guarded, progress_log, save_atomic, save_grid, usable_cpus
from prior import trim_padding
from toy_data import Shapes, attribute_accuracy, shapes_collate
from train_config import STAGES, Config, Optim, link, new_model, parse_args, prepare


# ----------------------------------------------------------------------------- data
@dataclass
class Data:
    images: dict  # size -> uint8 (N, 3, size, size), every training image rendered (or read) once
    captions: list


def load_data(cfg: Config, sizes: tuple[int, ...], log) -> Data:
    """Render (or read) the training set once into memory: uint8 images per size + captions."""
    kind = cfg.data.partition(":")[0]
    if kind == "shapes":
        ds = Shapes(cfg.train_size, sizes, cfg.seed, cfg.holdout_pairs, cfg.two_objects)
    else:  # real images, their training split only: evaluate() reads the held-out one
        ds = real_data.open_dataset(cfg.data, train=True, sizes=sizes, seed=cfg.seed)
    clock = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=min(4, usable_cpus()),
                                         collate_fn=shapes_collate)
    images, captions = {}, []
    for batch in loader:
        for s in batch["images"]:
            images.setdefault(s, []).append(((batch["images"][s] + 1) * 127.5).round().to(torch.uint8))
        captions += batch["caption"]
    images = {s: torch.cat(v) for s, v in images.items()}
    log(f"data: {len(captions)} {kind} examples at {sorted(images)} px in {time.perf_counter() - clock:.0f}s")
    return Data(images, captions)


def as_float(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device).float() / 127.5 - 1


@dataclass
class Run:
    """What the stages share: the config, this process, the run folder, the data and the frozen CLIP."""
    cfg: Config
    out: Path
    resume: bool
    stages: list
    device: torch.device
    rank: int = 0
    world: int = 1
    aside: list = field(default_factory=list)  # what --overwrite set aside as NAME.old
    data: Data | None = None
    clip: FrozenCLIP | None = None
    z_bank: torch.Tensor | None = None  # the true z_i of every training image
    clip_id: str = ""  # a hash of the frozen CLIP's weights: the later stages record which CLIP they read
    text: tuple | None = None  # (tokens, mask) of every training caption
    seconds: dict = field(default_factory=dict)  # per stage, for the report
    skipped: set = field(default_factory=set)  # stages the data cannot train (no images of their size)
    saved: bool = False  # a stage saved: the report and unclip.pt set aside no longer describe the folder

    def log(self, msg: str) -> None:
        if self.rank == 0:
            print(msg, flush=True)

    def seed(self, stage: str) -> None:  # each stage's init and RNG stream depend only on (seed, stage, rank)
        torch.manual_seed(self.cfg.seed * 1000 + STAGES.index(stage) * 10 + self.rank)

    def rows(self, stage: str, step: int, batch: int, shared: bool = True) -> torch.Tensor:
        """The example indices of a step, from (seed, stage, step) alone; shared: this process's share."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + STAGES.index(stage) * 100_003 + step)
        idx = torch.randint(0, len(self.data.captions), (batch,), generator=g)
        return idx[self.rank::self.world] if shared else idx

    @contextlib.contextmanager
    def timed(self, stage: str):
        clock = time.perf_counter()
        yield
        self.seconds[stage] = time.perf_counter() - clock


# ----------------------------------------------------------------------------- training
class LossOf(nn.Sequential):  # LossOf(model)(*a) = model.loss(*a), a call DistributedDataParallel syncs
    def forward(self, *args):
        return self[0].loss(*args)


def rng_state(device) -> list:  # the generators a loss draws from: the CPU's, and the GPU's on CUDA
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def resume_from(path: Path, model, ema, opt, run: Run, oc: Optim) -> tuple[int, list, float]:
    """Weights, optimizer, step, loss history, training seconds and this process's RNG state from a stage
    checkpoint; a file without training state (a copied clip.pt) counts as finished."""
    ck = torch.load(path, map_location=run.device, weights_only=True)
    # a stage trained under other options (or older defaults, or on another CLIP: checked first, as its
    # widths would show as the model's) is named, not loaded into the wrong shapes
    wanted = train_config.stage_options(run.cfg, path.stem, run.clip_id)
    opt_fields = {f.name for f in fields(Optim)}
    train_config.refuse_changed(path, ck.get("train", {}).get("options", {}), wanted,
                                lambda k: f"--opt_{path.stem}.{k}" if k in opt_fields else f"--{k}")
    config = model.config if path.stem == "clip" else model.cfg  # a field older code lacked: its default
    saved = type(config)(**{k: v for k, v in ck["config"].items() if k in {f.name for f in fields(config)}})
    train_config.refuse_changed(path, *(json.loads(json.dumps(asdict(c))) for c in (saved, config)),
                                lambda k: f"--{path.stem}.{k}")
    ema.load_state_dict(ck["state_dict"])
    if "train" not in ck:
        return oc.steps, [], 0.0
    model.load_state_dict(ck["train"]["model"])
    opt.load_state_dict(ck["train"]["opt"])
    rngs = ck["train"]["rng"]  # one state list per process (a file of older code: the CPU state)
    state = rngs[run.rank % len(rngs)] if isinstance(rngs, list) else [rngs]
    torch.set_rng_state(state[0].cpu())
    if run.device.type == "cuda" and len(state) > 1:
        torch.cuda.set_rng_state(state[1].cpu(), run.device)
    return ck["train"]["step"], ck["train"]["history"], ck["train"].get("seconds", 0.0)


def save_stage(name: str, model, ema, opt, run: Run, progress: dict, fresh: bool) -> None:
    """The stage checkpoint (EMA weights + what resuming needs: progress's step, history, seconds and options,
    every process's RNG state), a preview; every cfg.snapshot_every steps also the EMA weights alone as
    <name>_<step>.pt. A stage trained afresh (fresh) first deletes an earlier run's snapshots and previews."""
    rngs = [rng_state(run.device)] * run.world
    if run.world > 1:  # each process draws its own noise: keep every one's state
        torch.distributed.all_gather_object(rngs, rng_state(run.device))
    if run.rank == 0:
        for old in [*run.out.glob(f"{name}_[0-9]*.pt"), *run.out.glob(f"grids/{name}_[0-9]*.png")] * fresh:
            old.unlink()  # an earlier run's snapshots and previews of this stage
        config = model.config if name == "clip" else model.cfg  # CLIP keeps OpenAI's attribute name
        weights = {"config": asdict(config), "state_dict": ema.state_dict()}
        train = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rngs} | progress
        save_atomic(weights | {"train": train}, run.out / f"{name}.pt")
        (run.out / f"{name}.pt.old").unlink(missing_ok=True)  # what --overwrite set aside is replaced
        run.saved = True
        if run.cfg.snapshot_every and (step := progress["step"]) % run.cfg.snapshot_every == 0:
            snapshot = weights | {"step": step, "seconds": progress["seconds"]}
            save_atomic(snapshot, run.out / f"{name}_{step:06d}.pt")
        if name != "clip":
            with diffusion.autocast(run.device, run.cfg.precision):
                preview(run, name, ema, progress["step"])


def checked(name: str, pending: list, step: int, path: Path) -> list:
    """The losses of the steps up to `step` since the last check, in one host sync. A non-finite loss or
    gradient norm stops the stage here, before the checkpoint of that step: no NaN weights are written."""
    rows = torch.stack(pending).tolist()
    for i, row in enumerate(rows):
        for what, v in zip(("loss", "gradient norm"), row, strict=True):
            if not math.isfinite(v):
                raise FloatingPointError(
                    f"{name}: {what} is {v} at step {step + 2 - len(rows) + i}; stopped. The last good "
                    f"checkpoint is kept at {path}. Lower --opt_{name}.lr or resume with --resume")
    return [loss for loss, _ in rows]


def train_stage(name: str, model: nn.Module, batch_fn, oc: Optim, run: Run):
    """AdamW + warmup/cosine lr + grad clipping + EMA -> (EMA model, eval mode; loss history). batch_fn(step):
    this process's share of model.loss's arguments, a pure function of the step (a resume sees the same
    data). A model with param_groups() (CLIP) chooses which parameters decay."""
    cfg, path = run.cfg, run.out / f"{name}.pt"
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    groups = model.param_groups() if hasattr(model, "param_groups") else params
    opt = oc.adamw(groups, run.device)
    start, history, spent = 0, [], 0.0
    if run.resume and path.exists():
        start, history, spent = resume_from(path, model, ema, opt, run, oc)
        run.log(f"{name}: already trained ({start} steps), skipping" if start >= oc.steps else
                f"{name}: resumed at step {start}/{oc.steps}")
    net = nn.parallel.DistributedDataParallel(LossOf(model)) if run.world > 1 else LossOf(model)
    # the network alone under autocast (a U-Net, a prior's Transformer); CLIP in fp32: later stages read it
    net_only = getattr(model, "net", model)
    hooks = [] if name == "clip" else diffusion.autocast_network(net_only, run.device, cfg.precision)
    pending, clock, warmup = [], time.perf_counter(), min(100, oc.steps // 10 + 1)
    begun, fresh = clock - spent, start == 0  # begun: the stage's training seconds count on across resumes
    options = train_config.stage_options(cfg, name, run.clip_id)
    for step in range(start, oc.steps):
        # linear warmup, then cosine decay to lr_floor of the peak
        progress = max(0.0, (step - warmup) / max(1, oc.steps - warmup))
        cosine = oc.lr_floor + (1 - oc.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))
        lr = oc.lr * min(1.0, (step + 1) / warmup) * cosine
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss = net(*batch_fn(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, 1.0, foreach=True)  # inf/NaN here would reach the weights
        opt.step()
        decay = min(oc.ema, (1 + step) / (10 + step))  # short runs: EMA warms up
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        pending.append(torch.stack([loss.detach().float(), norm.float()]))
        save = (step + 1) % cfg.ckpt_every == 0 or step + 1 == oc.steps
        if save or (step + 1) % cfg.log_every == 0:
            values = checked(name, pending, step, path)
            history += values
            rate = len(values) * oc.batch / (time.perf_counter() - clock)
            eta = (oc.steps - step - 1) * oc.batch / rate
            run.log(f"{name} step {step + 1}/{oc.steps} loss {sum(values) / len(values):.4f} "
                    f"lr {lr:.1e} {rate:.0f} ex/s eta {eta / 60:.1f} min")
            pending, clock = [], time.perf_counter()
        if save:
            save_stage(name, model, ema, opt, run, {"step": step + 1, "history": history, "options": options,
                                                    "seconds": time.perf_counter() - begun}, fresh)
            fresh = False
    for hook in hooks:
        hook.remove()
    return ema, history


@torch.no_grad()
def preview(run: Run, name: str, model, step: int) -> None:
    """The EMA model of a stage on 8 fixed training examples, as grids/<name>_<step>.png."""
    cfg, data, clip, s = run.cfg, run.data, run.clip, run.cfg.sampling
    idx, g = torch.arange(min(8, len(data.captions))), torch.Generator().manual_seed(cfg.seed)
    caps = [data.captions[i] for i in idx]
    if name in ("prior", "ar_prior"):  # the training images nearest its sampled z_i
        z = model.sample(*clip.encode_text(caps), generator=g)
        x = as_float(data.images[cfg.sizes[0]][(z @ run.z_bank.T).argmax(1).cpu()], "cpu")
    elif name == "decoder":  # from the true z_i, at half the sampling steps: a preview
        x = model.sample(run.z_bank[idx], *clip.tokenize(caps), steps=max(2, s.decoder_steps // 2),
                         guidance_scale=s.guidance, generator=g)
    else:  # an upsampler, on the true images of the size below
        k = STAGES.index(name) - 3
        lo = as_float(data.images[cfg.sizes[k]][idx], run.device)
        x = model.sample(lo, steps=s.up_steps[k], generator=g)
    save_grid(x.cpu(), caps, run.out / "grids" / f"{name}_{step:05d}.png", ncol=8)


# ----------------------------------------------------------------------------- the stages
def clip_stage(run: Run) -> None:
    """Stage 0: CLIP, trained contrastively [CLIP], then frozen: its z_i of every training image."""
    cfg, oc, path = run.cfg, run.cfg.opt_clip, run.out / "clip.pt"
    tokenizer = make_tokenizer(cfg.tokenizer, cfg.clip.context_length)
    images = run.data.images[cfg.clip.image_resolution]
    # every training caption tokenized once (BPE costs ~0.1 ms a caption), padding past the longest cut
    run.text = trim_padding(*tokenizer(run.data.captions))

    def batch(step):  # the whole batch in every process: the contrastive loss needs all its negatives
        i = run.rows("clip", step, oc.batch, shared=False)
        return as_float(images[i], run.device), run.text[0][i], run.text[1][i]
    if "clip" in run.stages:
        with run.timed("clip"):
            run.seed("clip")
            model = train_stage("clip", new_model(cfg, "clip").to(run.device), batch, oc, run)[0]
    else:
        model = load_clip(path, map_location=run.device)
        if (kind := tokenizer_kind(model.config.vocab_size)) != cfg.tokenizer:
            raise SystemExit(f"{path} is a CLIP trained on {kind} tokens: pass --tokenizer {kind}")
    run.clip = FrozenCLIP(model, tokenizer)
    run.clip_id = metrics.weights_id(model)
    run.z_bank = torch.cat([run.clip.encode_image(as_float(x, run.device)) for x in images.split(512)])
    link(cfg, run.clip)


def prior_stage(run: Run) -> None:
    """Stage 1: the prior P(z_i | y) [unCLIP] Sec. 2.2: from a caption's z_t and text states to its z_i."""
    cfg, captions = run.cfg, run.data.captions
    oc = getattr(cfg, f"opt_{cfg.prior_name}")
    if "prior" not in run.stages:
        return
    with run.timed("prior"):
        run.seed("prior")
        prior = new_model(cfg, "prior").to(run.device)
        # the frozen text tower once for every distinct caption, not once per step (a third of a prior
        # step; real data repeats a few dozen captions); trailing padding cut, which the causal tower allows
        distinct = list(dict.fromkeys(captions))
        enc = [run.clip.encode_text(distinct[i:i + 512]) for i in range(0, len(distinct), 512)]
        length = max(int(e[2].sum(1).max()) for e in enc)
        row = {c: k for k, c in enumerate(distinct)}
        row = torch.tensor([row[c] for c in captions], device=run.device)
        z_t, states, mask = (torch.cat([e[k][:, :length] if k else e[0] for e in enc])[row] for k in range(3))
        if cfg.prior_kind == "ar":  # PCA basis and bucket edges from the training embeddings
            run.log(f"ar prior: PCA keeps {prior.fit_codebook(run.z_bank, z_t):.4f} of the z_i variance")

        def batch(step):
            idx = run.rows("prior", step, oc.batch)
            return run.z_bank[idx], z_t[idx], states[idx], mask[idx]
        train_stage(cfg.prior_name, prior, batch, oc, run)


def decoder_stage(run: Run) -> None:
    """Stage 2: the decoder P(x | z_i, y), trained on the TRUE z_i of its target image [unCLIP] Sec. 2.1."""
    cfg, data, oc = run.cfg, run.data, run.cfg.opt_decoder

    def batch(step):
        idx = run.rows("decoder", step, oc.batch)
        x = as_float(data.images[cfg.clip.image_resolution][idx], run.device)
        # all-padding columns cut on the host (no sync): the same loss (causal encoder, masked keys), faster
        text = trim_padding(run.text[0][idx], run.text[1][idx])
        return x, run.z_bank[idx], *(a.to(run.device) for a in text)
    if "decoder" in run.stages:
        with run.timed("decoder"):
            run.seed("decoder")
            train_stage("decoder", new_model(cfg, "decoder").to(run.device), batch, oc, run)


def upsampler_stage(run: Run, name: str) -> None:
    """Stages 3-4: an upsampler, trained on random crops of the higher-resolution images [unCLIP] Sec. 2.1."""
    cfg, oc, size = run.cfg, getattr(run.cfg, f"opt_{name}"), getattr(run.cfg, name).high_res
    if name in run.stages and size not in run.data.images:
        run.skipped.add(name)  # so an earlier run's checkpoint of it is not put back beside this data's
        run.log(f"{name}: skipped, the data has no {size}x{size} images")
    elif name in run.stages:
        batch = lambda step: (as_float(run.data.images[size][run.rows(name, step, oc.batch)], run.device),)
        with run.timed(name):
            run.seed(name)
            train_stage(name, new_model(cfg, name).to(run.device), batch, oc, run)


def evaluation_stage(run: Run) -> dict:
    """unclip.pt (the one-file pipeline for unclip.py), then the metrics into report.json / report.md."""
    cfg, out = run.cfg, run.out
    if run.world > 1:
        torch.distributed.barrier()
    needed = [out / f"{cfg.prior_name}.pt", out / "decoder.pt"]
    if run.rank > 0:
        return {}
    if not all(p.exists() for p in needed):
        run.log(f"evaluation skipped: it needs {', '.join(p.name for p in needed)} in {out}")
        return {}
    # a stage trained on an earlier CLIP does not pair with this one
    if stale := [p for p in needed if unclip.read_checkpoint(p).get("train", {}).get("options", {}).get(
            "clip", run.clip_id) != run.clip_id]:
        stages = ",".join(map(train_config.stage_of, stale))
        run.log(f"evaluation skipped: {', '.join(p.name for p in stale)} trained on another CLIP than "
                f"{out / 'clip.pt'}; retrain with --overwrite --stages {stages}")
        return {}
    pipe = unclip.from_stage_checkpoints(out, device=run.device, prior_kind=cfg.prior_kind)
    guarded(out / "unclip.pt", lambda: unclip.save_pipeline(out / "unclip.pt", pipe))
    with run.timed("eval"):
        report = evaluate(cfg, pipe, run.clip, run.z_bank, run.data, out, run.log)
    report |= {"seconds": {k: round(v, 1) for k, v in run.seconds.items()}, "config": asdict(cfg)}
    metrics.write_report(report, out, run.log)
    for name in ("unclip.pt", "report.json", "report.md"):  # what --overwrite set aside is replaced
        (out / f"{name}.old").unlink(missing_ok=True)
    return report


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    cfg, args = parse_args(argv, __doc__)
    run = Run(cfg, Path(cfg.out), args.resume, *prepare(cfg, args))  # every check before any work
    try:
        run.data = load_data(cfg, cfg.data_sizes(run.stages), run.log)
        clip_stage(run)
        prior_stage(run)
        decoder_stage(run)
        upsampler_stage(run, "up1")
        upsampler_stage(run, "up2")
        report = evaluation_stage(run)
    finally:  # what --overwrite set aside and this run did not replace goes back, whatever stopped it
        metrics.put_back(run.aside, but=run.skipped | ({"report", "unclip"} if run.saved else set()))
    if run.world > 1:
        torch.distributed.destroy_process_group()
    return report


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(cfg: Config, pipe, clip: FrozenCLIP, z_bank, data: Data, out: Path, log) -> dict:
    """The metrics on held-out captions: attribute accuracy, CLIP score, FD_CLIP, prior cosine."""
    s, shapes, res = cfg.sampling, cfg.data == "shapes", cfg.clip.image_resolution
    if shapes:  # another seed: scenes and captions the training never saw
        held = Shapes(cfg.eval_size, (res,), cfg.seed + toy_data.EVAL_SEED, holdout=cfg.holdout_pairs)
        held = shapes_collate([held[i] for i in range(cfg.eval_size)])
        captions, named, real = held["caption"], held["named"], held["images"][res]
    else:  # the held-out split: IDX's and CIFAR-10's test files, a folder's held-out captions
        g = torch.Generator().manual_seed(cfg.seed)
        held_set = real_data.open_dataset(cfg.data, train=False, sizes=(res,), seed=cfg.seed)
        idx = torch.randperm(len(held_set), generator=g)[:cfg.eval_size].tolist()
        held = shapes_collate([held_set[i] for i in idx])
        captions, named, real = held["caption"], held.get("named"), held["images"][res]
    with diffusion.autocast(clip.device, cfg.precision):
        result = pipe.generate(captions, seed=cfg.seed, prior_steps=s.prior_steps, candidates=s.candidates,
                               decoder_steps=s.decoder_steps, decoder_guidance=s.guidance,
                               upsampler_steps=list(s.up_steps), progress=progress_log(pipe.stages, log))
    images, m = result["images"], scoring.clip_readings(clip, result["images"][0], captions, real)
    z_t, z_real = m["z_t"], m["z_real"]
    report = {"n": len(captions), "clip_score": m["clip_score"], "clip_score_real": clip_score(z_real, z_t),
              "fd_clip": m["fd_clip"]}
    # the prior against the true z_i of each caption's image and two baselines [unCLIP] Sec. 5.1
    z_hat = result["z_i"]
    cos = lambda a: F.cosine_similarity(a, z_real).mean().item()
    report["prior_cosine"] = {"prior": cos(z_hat), "z_t as z_i": cos(z_t),
                              "mean z_i": cos(z_bank.mean(0, keepdim=True))}
    if named is not None:  # Shapes' attributes, or a labelled set's class read by its own classifier
        if shapes:
            ev, key = toy_data.Evaluator(), "accuracy"
        else:  # trained once on the training split, never on CLIP or generated images
            train_set, key = real_data.open_dataset(cfg.data, train=True, seed=cfg.seed), "class_accuracy"
            ev = real_data.ClassEvaluator.load_or_train(out / "classifier.pt", train_set, held_set, log=log)
            report |= {"classifier_test_accuracy": ev.info.get("test_accuracy"),
                       "class_accuracy_real": attribute_accuracy(ev.read(real), named),  # the ceiling
                       "fd_classifier": ev.frechet(images[0].cpu(), real)}
        for x in (images[0], images[-1]):
            report[f"{key}_{x.shape[-1]}"] = attribute_accuracy(ev.read(x.cpu()), named)
        nearest = (z_hat @ z_bank.T).argmax(1).cpu()  # retrieval: the real image closest to ẑ_i
        retrieved = as_float(data.images[cfg.clip.image_resolution][nearest], "cpu")
        report["prior_retrieval"] = attribute_accuracy(ev.read(retrieved), named)
    for x in images:
        save_grid(x[:32].cpu(), captions[:32], out / f"samples_{x.shape[-1]}.png", ncol=8)
    if named is not None and not shapes:
        real_data.save_class_grid(images[0], captions, named, ev.classes, out / "samples_per_class_32.png")
    return report


if __name__ == "__main__":
    try:
        main()
    except (FloatingPointError, OSError) as e:  # a diverged loss, a full or read-only disk
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
