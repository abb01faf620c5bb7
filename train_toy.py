"""Train the whole unCLIP stack on Shapes, then measure how good it is.

    python train_toy.py                        # the default run -> runs/toy/ (report.md, *.png)
    python train_toy.py --quick                # every stage end to end in about 2.5 minutes
    python train_toy.py --stages decoder,up1 --resume
    python train_toy.py --decoder.channels 96 --opt_decoder.steps 8000
    torchrun --nproc_per_node=2 train_toy.py   # DistributedDataParallel, as nanoGPT does it

Stages run in the paper's order [unCLIP] Sec. 2: CLIP (frozen afterwards) -> prior -> decoder
-> upsampler 1 -> upsampler 2; each later stage reads the frozen results of the earlier ones
from the run folder. Every stage checkpoint is {"config", "state_dict" (EMA weights), "train"
(raw weights, optimizer, step, loss history, RNG)} written atomically, so `--resume` continues
a killed run and a failed run never destroys a good checkpoint. The end writes unclip.pt (the
one-file pipeline for unclip.py) and report.json / report.md
with the metrics (attribute accuracy, CLIP score, FD_CLIP, prior cosine).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import diffusion
import unclip
from clip_frozen import CLIP, ByteTokenizer, CLIPConfig, FrozenCLIP, load_clip, save_clip, train_clip
from decoder import Decoder, DecoderConfig
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from toy_data import (
    CIFAR10Captions,
    Evaluator,
    ImageFolderCaptions,
    Shapes,
    attribute_accuracy,
    clip_score,
    frechet_distance,
    save_grid,
    shapes_collate,
)
from upsample import Upsampler, UpsamplerConfig, stage_config


@dataclass
class Optim:
    steps: int  # optimizer steps for the stage
    batch: int  # examples per step (split across processes under torchrun)
    lr: float  # peak learning rate after warmup; cosine decay to 10% of it
    beta2: float = 0.999  # AdamW β2 ([unCLIP] Table 3: 0.999 decoder/upsamplers, 0.96 prior)
    weight_decay: float = 0.0  # [unCLIP] Table 3: 6e-2 for the prior, none for the decoder
    ema: float = 0.999  # EMA decay of the weights used for sampling (paper 0.9999 at 10^5+ steps)


@dataclass
class Sampling:
    prior_steps: int = 64  # [unCLIP] Sec. 4: 64 prior steps
    candidates: int = 2  # best-of-2 prior samples by dot product with z_t [unCLIP] Sec. 2.2
    decoder_steps: int = 50  # the paper uses 250; [IDDPM] shows learned Σ keeps quality at 50
    guidance: float = 3.0  # decoder classifier-free guidance scale [CFG]
    # [unCLIP] Table 3 uses 27 and 15 DDIM steps; our upsamplers start from bicubic and add edges:
    # 10 and 6 read the same at 128x128 in 40% of the time (README, "Upsamplers")
    up_steps: tuple[int, ...] = (10, 6)


@dataclass
class Config:
    out: str = "runs/toy"  # run folder: checkpoints, grids, report
    seed: int = 0
    device: str = "auto"  # auto = cuda, else mps, else cpu
    # "bf16": the networks under bf16 autocast (weights, optimizer and losses stay fp32); "auto": bf16
    # on CUDA and on CPUs with native bf16, else fp32 (see diffusion.autocast)
    precision: str = "auto"
    stages: str = "clip,prior,decoder,up1,up2"
    data: str = "shapes"  # or cifar10:PATH (32x32 only: no upsamplers) or folder:PATH
    train_size: int = 10000  # scenes rendered once into memory at 32, 64 and 128 pixels
    eval_size: int = 100  # held-out captions scored at the end
    # "colour shape" pairs (comma-separated) never rendered for training or evaluation: the
    # compositional-generalization experiment (experiments.py holdout) asks for them
    holdout: str = "purple triangle"
    prior_kind: str = "diffusion"  # "diffusion" or "ar" [unCLIP] Sec. 2.2
    log_every: int = 50
    ckpt_every: int = 500
    # a lighter CLIP than CLIPConfig's defaults: 8x8-pixel patches and a 64-wide text tower keep
    # the CLIP and prior stages to a few minutes of a 2-core CPU
    clip: CLIPConfig = field(default_factory=lambda: CLIPConfig(
        vision_layers=2, vision_patch_size=8, transformer_width=64, transformer_layers=2))
    prior: DiffusionPriorConfig = field(default_factory=DiffusionPriorConfig)
    # 64 buckets per component, not the paper's 1024: after 1500 steps the 1024-way heads were
    # still near a uniform guess (loss 6.66, log 1024 = 6.93), 64 well below it (README, Experiments 1)
    ar_prior: ARPriorConfig = field(default_factory=lambda: ARPriorConfig(buckets=64))
    # v prediction, coordinate channels and a z_i map: toy-budget departures from GLIDE's decoder
    # that made background, position and shape learnable in minutes; attention at 8x8 only (16x16
    # cost a quarter of the step) buys 4500 steps in the time of 3500 (README, "The decoder")
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(
        num_res_blocks=1, mean_type="v", coords=True, clip_map=True, attention_resolutions=(8,)))
    up1: UpsamplerConfig = field(default_factory=lambda: stage_config(1))
    up2: UpsamplerConfig = field(default_factory=lambda: stage_config(2))
    # CLIP learns position last (a late drop of the loss): 800 x 64 left zero-shot position at
    # 11-14%, 1000 x 128 95% on 64 held-out renders, 2000 x 128 100% (README, Experiments)
    opt_clip: Optim = field(default_factory=lambda: Optim(steps=2000, batch=128, lr=1e-3))
    # 1200 steps at 1e-3, not 600 at 5e-4: all-correct 73% -> 75% (old decoder), 79% -> 83% (README, "Prior")
    opt_prior: Optim = field(default_factory=lambda: Optim(steps=1200, batch=64, lr=1e-3,
                                                           beta2=0.96, weight_decay=6e-2))
    # At the diffusion prior's lr 5e-4 the AR prior's 1024-way heads stayed a uniform guess (README,
    # "Experiments", 1); 4000 steps, not 1500: z_i cos 0.788 -> 0.840 (README, "Prior")
    opt_ar_prior: Optim = field(default_factory=lambda: Optim(steps=4000, batch=64, lr=3e-3,
                                                              beta2=0.96, weight_decay=6e-2))
    # EMA 0.995 (a ~200-step window): a 1000-step average (0.999) lags a net still improving
    # fast; not measured in isolation (README, "The decoder")
    opt_decoder: Optim = field(default_factory=lambda: Optim(steps=4500, batch=16, lr=2e-3, ema=0.995))
    # the upsamplers start as bicubic (zero-initialised residual) and only add edges: a high lr
    # and a short EMA suit a few hundred steps (README, "Upsamplers")
    opt_up1: Optim = field(default_factory=lambda: Optim(steps=300, batch=16, lr=2e-3, ema=0.995))
    opt_up2: Optim = field(default_factory=lambda: Optim(steps=600, batch=8, lr=2e-3, ema=0.995))
    sampling: Sampling = field(default_factory=Sampling)


# --quick: every stage end to end in about 2.5 min on a 2-core CPU; colour and background right,
# shape and position not yet (README, "Training"). At 150 CLIP steps its embeddings had not
# separated (mean z_i cos 0.92) and every attribute but background read at chance.
QUICK = {"out": "runs/quick", "train_size": 2000, "eval_size": 24,
         "opt_clip.steps": 400, "opt_clip.batch": 64, "opt_prior.steps": 200, "opt_ar_prior.steps": 200,
         "opt_decoder.steps": 300, "opt_up1.steps": 40, "opt_up2.steps": 30, "sampling.decoder_steps": 25}
STAGES = ("clip", "prior", "decoder", "up1", "up2")
RUN_FILES = ("clip.pt", "prior.pt", "ar_prior.pt", "decoder.pt", "up1.pt", "up2.pt", "unclip.pt",
             "report.json")


# ----------------------------------------------------------------------------- config and CLI
def _leaves(obj, prefix=""):
    """(dotted name, owning dataclass, field) for every scalar/tuple field of a nested config."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", obj, f


def set_option(cfg: Config, name: str, value) -> None:
    """Set a dotted field; a str (from the command line) is read as the field's type, a tuple as a,b,c."""
    owner, f = next(((o, f) for dotted, o, f in _leaves(cfg) if dotted == name), (None, None))
    if owner is None:
        raise SystemExit(f"unknown option --{name}; see --help")
    current = getattr(owner, f.name)
    kind = type(current[0] if current else 0) if isinstance(current, tuple) else type(current)
    try:
        if isinstance(value, str) and kind is bool:
            value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                value.lower()]
        elif isinstance(value, str) and isinstance(current, tuple):
            value = tuple(kind(v) for v in value.split(",") if v)
        elif isinstance(value, str):
            value = kind(value)
    except (KeyError, ValueError):
        want = {bool: "true or false", int: "an int", float: "a number"}.get(kind, kind.__name__)
        want += " (a,b,...)" * isinstance(current, tuple)
        raise SystemExit(f"--{name} {value}: must be {want}") from None
    setattr(owner, f.name, value)


def _rule(name: str, value) -> str | None:
    """What a numeric option `name` must be, or None if `value` is fine: one rule per type and name."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if name in ("beta2", "ema"):
        return None if 0 <= value < 1 else "must lie in [0, 1)"
    if "drop" in name or name.endswith("prob"):  # dropout and augmentation probabilities
        return None if 0 <= value <= 1 else "must lie in [0, 1]"
    if name in ("seed", "weight_decay", "guidance", "text_layers", "clip_dim"):  # 0 is meaningful
        return None if value >= 0 else "must be >= 0"
    if name.endswith("_steps"):  # a respaced sampler keeps the first and the last timestep
        return None if value >= 2 else "must be >= 2"
    return None if value > 0 else "must be >= 1" if isinstance(value, int) else "must be > 0"


def check_config(cfg: Config, stages: list, world: int) -> None:
    """Every option checked before any work: numbers by _rule, then whether the stages fit together
    (each model is built once, on the CPU, so its own checks run; the global RNG is left as it was)."""
    for dotted, owner, f in _leaves(cfg):
        value = getattr(owner, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, int | float) and not isinstance(v, bool) and (why := _rule(f.name, v)):
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
                raise SystemExit(f"--{dotted} {shown}: {why}")
    if cfg.precision not in diffusion.PRECISIONS:
        raise SystemExit(f"--precision {cfg.precision}: must be one of {', '.join(diffusion.PRECISIONS)}")
    if cfg.prior_kind not in ("diffusion", "ar"):
        raise SystemExit(f"--prior_kind {cfg.prior_kind}: must be diffusion or ar")
    try:
        torch.device("cpu" if cfg.device == "auto" else cfg.device)
    except RuntimeError:
        raise SystemExit(f"--device {cfg.device}: must be auto, cpu, cuda, cuda:N or mps") from None
    if (kind := cfg.data.partition(":")[0]) not in ("shapes", "cifar10", "folder"):
        raise SystemExit(f"--data {cfg.data}: must be shapes, cifar10:PATH or folder:PATH")
    s, res = cfg.sampling, cfg.clip.image_resolution
    fits = [(f"--opt_{n}.batch", getattr(cfg, f"opt_{n}").batch % world == 0,
             f"must be a multiple of the {world} processes") for n in stages if n != "clip"]
    fits += [("--up1.low_res", cfg.up1.low_res == res, f"must equal --clip.image_resolution {res}"),
             ("--up2.low_res", cfg.up2.low_res == cfg.up1.high_res,
              f"must equal --up1.high_res {cfg.up1.high_res}"),
             ("--sampling.up_steps", len(s.up_steps) == 2, "needs one value per upsampler (2)"),
             ("--sampling.prior_steps", s.prior_steps <= cfg.prior.timesteps,
              f"must be <= --prior.timesteps {cfg.prior.timesteps}"),
             ("--sampling.decoder_steps", s.decoder_steps <= cfg.decoder.timesteps,
              f"must be <= --decoder.timesteps {cfg.decoder.timesteps}")]
    fits += [("--sampling.up_steps", n <= up.timesteps, f"must be <= --up{k + 1}.timesteps {up.timesteps}")
             for k, (n, up) in enumerate(zip(s.up_steps[:2], (cfg.up1, cfg.up2), strict=False))]
    for flag, ok, why in fits:
        if not ok:
            raise SystemExit(f"{flag} {_flag_value(cfg, flag)}: {why}")
    if kind == "shapes":
        for flags, kw in (("--clip.image_resolution, --up1.high_res, --up2.high_res",
                           {"sizes": sizes_of(cfg)}), ("--holdout", {"holdout": holdout_pairs(cfg)})):
            try:
                Shapes(1, **kw)
            except ValueError as e:
                raise SystemExit(f"{flags}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        for name in ("clip", *[n for n in stages if n != "clip"]):
            flag = prior_name(cfg) if name == "prior" else name
            try:
                model = new_model(cfg, name)
            except ValueError as e:
                raise SystemExit(f"--{flag}.* do not fit: {e}") from None
            if name == "clip":  # the later stages take these fields from the CLIP
                link(cfg, FrozenCLIP(model, ByteTokenizer(cfg.clip.context_length)))
            elif name != "prior":  # a U-Net halves its input len(channel_mults) - 1 times
                c = getattr(cfg, name)
                size = c.image_size if name == "decoder" else c.high_res // (2 if c.crop else 1)
                if size % model.net.factor:
                    raise SystemExit(f"--{name}.channel_mults {_flag_value(cfg, f'--{name}.channel_mults')}: "
                                     f"its {size}x{size} {'crops' if name != 'decoder' else 'images'} "
                                     f"are not a multiple of {model.net.factor}")


def prior_name(cfg: Config) -> str:  # the prior's checkpoint name and config field
    return "prior" if cfg.prior_kind == "diffusion" else "ar_prior"


def sizes_of(cfg: Config) -> tuple:  # the image sizes of the decoder and the upsamplers
    return cfg.clip.image_resolution, cfg.up1.high_res, cfg.up2.high_res


def new_model(cfg: Config, stage: str) -> nn.Module:
    """The freshly initialised model a stage trains."""
    if stage == "prior":
        return (DiffusionPrior if cfg.prior_kind == "diffusion" else ARPrior)(getattr(cfg, prior_name(cfg)))
    return {"clip": CLIP, "decoder": Decoder, "up1": Upsampler, "up2": Upsampler}[stage](getattr(cfg, stage))


def link(cfg: Config, clip: FrozenCLIP) -> None:
    """The fields the prior and the decoder take from the frozen CLIP."""
    p, d = getattr(cfg, prior_name(cfg)), cfg.decoder
    p.clip_dim, p.text_width = clip.embed_dim, clip.text_width
    d.clip_dim, d.image_size = clip.embed_dim, clip.model.config.image_resolution
    d.vocab_size, d.context_length = clip.vocab_size, clip.context_length


def _flag_value(cfg: Config, flag: str):
    value = next(getattr(o, f.name) for dotted, o, f in _leaves(cfg) if dotted == flag[2:])
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def holdout_pairs(cfg: Config) -> list:
    return [tuple(p.split()) for p in cfg.holdout.split(",") if p.strip()]


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny preset: all stages in about 2.5 minutes")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the folder's report and the checkpoints of --stages, then train those afresh")
    for dotted, owner, f in _leaves(cfg):
        p.add_argument(f"--{dotted}", default=None, metavar=type(getattr(owner, f.name)).__name__.upper(),
                       help=f"(default: {getattr(owner, f.name)})")
    args = p.parse_args(argv)
    given = {dotted: v for dotted, _, _ in _leaves(cfg) if (v := getattr(args, dotted)) is not None}
    for name, value in ((QUICK if args.quick else {}) | given).items():  # the command line wins over --quick
        set_option(cfg, name, value)
    return cfg, args


def check_folder(out: Path, trained: list, args, rank: int) -> None:
    """Refuse a folder that holds a run unless --resume or --overwrite says what to do with it:
    a forgotten --resume must not retrain (and so overwrite) stages that are already trained."""
    if args.resume and args.overwrite:
        raise SystemExit("pass --resume (continue the run) or --overwrite (start afresh), not both")
    found = [p.name for p in map(out.joinpath, RUN_FILES) if p.exists()]
    if found and not (args.resume or args.overwrite):
        raise SystemExit(f"{out} already holds {', '.join(found)}. Pass --resume to continue that run (a "
                         "finished stage is kept, a stopped one goes on from its last checkpoint), "
                         "--overwrite to train the stages in --stages afresh, or --out for another folder")
    try:  # a read-only or missing disk fails here, not after the first stage
        out.mkdir(parents=True, exist_ok=True)
        (probe := out / f".write_test{rank}").write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"cannot write to {out} ({e.strerror or e}): pass --out a writable folder") from None
    if args.overwrite and rank == 0:  # stale files would pass for this run's if it stopped early
        for name in ("report.json", "unclip.pt", *trained):
            (out / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- data
def load_data(cfg: Config, sizes: tuple[int, ...], log) -> dict:
    """Render (or read) the training set once into memory: uint8 images per size + captions."""
    kind, _, path = cfg.data.partition(":")
    make = {"shapes": lambda: Shapes(cfg.train_size, sizes=sizes, seed=cfg.seed, holdout=holdout_pairs(cfg)),
            "cifar10": lambda: CIFAR10Captions(path, train=True),
            "folder": lambda: ImageFolderCaptions(path, size=max(sizes))}
    ds = make[kind]()
    clock = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=min(4, os.cpu_count() or 1),
                                         collate_fn=shapes_collate)
    images, captions = {}, []
    for batch in loader:
        for s in batch["images"]:
            images.setdefault(s, []).append(((batch["images"][s] + 1) * 127.5).round().to(torch.uint8))
        captions += batch["caption"]
    images = {s: torch.cat(v) for s, v in images.items()}
    log(f"data: {len(captions)} {kind} examples at {sorted(images)} px in {time.perf_counter() - clock:.0f}s")
    return {"images": images, "captions": captions}


def as_float(x: torch.Tensor, device) -> torch.Tensor:
    return x.to(device).float() / 127.5 - 1


# ----------------------------------------------------------------------------- training
class LossOf(nn.Sequential):  # LossOf(model)(*a) = model.loss(*a), a call DistributedDataParallel syncs
    def forward(self, *args):
        return self[0].loss(*args)


def guarded(path: Path, save) -> None:
    """save() writes path.tmp and renames it to path: never a half-written file. If the write fails (a
    full disk) the partial file goes, path keeps what it held, and the error says what to do."""
    try:
        save()
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        Path(f"{path}.tmp").unlink(missing_ok=True)
        free = shutil.disk_usage(Path(path).parent).free / 2**20
        raise OSError(f"cannot write {path} ({str(e).splitlines()[0][:160]}; {free:.0f} MiB free there). "
                      "The files written before are kept: make room, then run again with --resume") from None


def save_atomic(obj, path: Path) -> None:
    guarded(path, lambda: (torch.save(obj, f"{path}.tmp"), os.replace(f"{path}.tmp", path)))


def save_atomic_text(path: Path, text: str) -> None:
    guarded(path, lambda: (Path(f"{path}.tmp").write_text(text), os.replace(f"{path}.tmp", path)))


def rng_state(device) -> list:  # the generators a loss draws from: the CPU's, and the GPU's on CUDA
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def autocast_network(module: nn.Module, device, precision: str) -> list:
    """Hooks that run module's forward under diffusion.autocast and hand its output on in fp32: what a
    loss does around its network (conditioning, noising, the loss itself) stays in fp32."""
    entered = []

    def enter(m, args):
        entered.append(diffusion.autocast(device, precision))
        entered[-1].__enter__()

    def leave(m, args, out):  # also when forward raises (out None): autocast must not stay on
        entered.pop().__exit__(None, None, None)
        return None if out is None else out.float()
    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]


def train_stage(name: str, model: nn.Module, batch_fn, opt_cfg: Optim, cfg: Config, run: dict):
    """AdamW + warmup/cosine lr + grad clipping + EMA; returns the EMA model (eval mode) and the loss
    history. batch_fn(step, (rank, world)) -> this process's share of model.loss's arguments for the
    step, a pure function of the step, so a resumed run sees the same data as an uninterrupted one."""
    path, device = run["out"] / f"{name}.pt", run["device"]
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    # foreach: one kernel per operation over all tensors (fused differs from it in the last bit on a CPU)
    opt = torch.optim.AdamW(params, lr=opt_cfg.lr, betas=(0.9, opt_cfg.beta2),
                            weight_decay=opt_cfg.weight_decay, foreach=True)
    start, history = 0, []
    if run["resume"] and path.exists():
        ck = torch.load(path, map_location=device, weights_only=True)
        ema.load_state_dict(ck["state_dict"])
        model.load_state_dict(ck["train"]["model"])
        opt.load_state_dict(ck["train"]["opt"])
        start, history = ck["train"]["step"], ck["train"]["history"]
        rngs = ck["train"]["rng"]  # one state list per process (a file of older code: the CPU state)
        state = rngs[run["rank"] % len(rngs)] if isinstance(rngs, list) else [rngs]
        torch.set_rng_state(state[0].cpu())
        if device.type == "cuda" and len(state) > 1:
            torch.cuda.set_rng_state(state[1].cpu(), device)
        run["log"](f"{name}: resumed at step {start}/{opt_cfg.steps}")
    net = nn.parallel.DistributedDataParallel(LossOf(model)) if run["world"] > 1 else LossOf(model)
    amp = diffusion.autocast(device, cfg.precision)
    hooks = autocast_network(getattr(model, "net", model), device, cfg.precision)  # a U-Net, or a prior
    pending, clock, warmup = [], time.perf_counter(), min(100, opt_cfg.steps // 10 + 1)
    for step in range(start, opt_cfg.steps):
        # linear warmup, then cosine decay to 10% of the peak
        progress = max(0.0, (step - warmup) / max(1, opt_cfg.steps - warmup))
        lr = opt_cfg.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss = net(*batch_fn(step, (run["rank"], run["world"])))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        decay = min(opt_cfg.ema, (1 + step) / (10 + step))  # short runs: EMA warms up
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        pending.append(loss.detach().float())
        save = (step + 1) % cfg.ckpt_every == 0 or step + 1 == opt_cfg.steps
        if save or (step + 1) % cfg.log_every == 0:
            values = torch.stack(pending).tolist()  # one host sync per log interval, not per step
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise FloatingPointError(
                        f"{name}: loss is {v} at step {step + 2 - len(values) + i}; stopped. The last "
                        f"good checkpoint is kept at {path}. Lower --opt_{name}.lr or resume with --resume")
            history += values
            rate = len(values) * opt_cfg.batch / (time.perf_counter() - clock)
            eta = (opt_cfg.steps - step - 1) * opt_cfg.batch / rate
            run["log"](f"{name} step {step + 1}/{opt_cfg.steps} loss {sum(values) / len(values):.4f} "
                       f"lr {lr:.1e} {rate:.0f} ex/s eta {eta / 60:.1f} min")
            pending, clock = [], time.perf_counter()
            rngs = [rng_state(device)] * run["world"]
            if save and run["world"] > 1:  # each process draws its own noise: keep every one's state
                torch.distributed.all_gather_object(rngs, rng_state(device))
            if save and run["rank"] == 0:
                save_atomic({"config": asdict(model.cfg), "state_dict": ema.state_dict(),
                             "train": {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                                       "history": history, "rng": rngs}}, path)
                with amp:
                    run["preview"](name, ema, step + 1)
    for hook in hooks:
        hook.remove()
    if start >= opt_cfg.steps:
        run["log"](f"{name}: already trained ({start} steps), skipping")
    return ema, history


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    cfg, args = parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    check_config(cfg, stages, world)
    if cfg.device == "auto":
        mps = torch.backends.mps.is_available()
        cfg.device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    device = torch.device(cfg.device)
    if world > 1:  # torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
            torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out, prior_file = Path(cfg.out), f"{prior_name(cfg)}.pt"
    check_folder(out, [prior_file if s == "prior" else f"{s}.pt" for s in stages], args, rank)

    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)

    def seed_stage(stage):  # each stage's init and RNG stream depend only on (seed, stage, rank)
        torch.manual_seed(cfg.seed * 1000 + STAGES.index(stage) * 10 + rank)

    run = {"out": out, "device": device, "rank": rank, "world": world, "resume": args.resume, "log": log}
    times = {}
    sizes = sizes_of(cfg)
    data = load_data(cfg, sizes if cfg.data == "shapes" else sizes[:1], log)
    n = len(data["captions"])
    tokenizer = ByteTokenizer(cfg.clip.context_length)

    def rows_of(step, batch, rows, stage):  # this process's example indices, from (seed, stage, step)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + STAGES.index(stage) * 100_003 + step)
        idx = torch.randint(0, n, (batch,), generator=g)
        return idx[rows[0]::rows[1]]

    # stage 0: CLIP, trained contrastively, then frozen for every later stage [CLIP]
    if "clip" in stages and not (args.resume and (out / "clip.pt").exists()):
        clock = time.perf_counter()
        seed_stage("clip")
        model = new_model(cfg, "clip").to(device)
        oc, drawn = cfg.opt_clip, [0]

        def batches():  # counts the steps begun, for the ETA
            for step in range(oc.steps):
                drawn[0], i = step + 1, rows_of(step, oc.batch, (0, 1), "clip")
                yield as_float(data["images"][sizes[0]][i], device), [data["captions"][j] for j in i]

        def log_eta(msg):  # train_clip's line + the time left at the mean rate so far
            left = (time.perf_counter() - clock) / drawn[0] * (oc.steps - drawn[0])
            log(f"{msg} eta {left / 60:.1f} min")

        train_clip(model, tokenizer, batches(), oc.steps, lr=oc.lr, device=device,
                   log_every=cfg.log_every, log=log_eta)
        if rank == 0:
            guarded(out / "clip.pt", lambda: save_clip(model, out / "clip.pt"))
        if world > 1:  # every process reads the CLIP process 0 saved
            torch.distributed.barrier()
        times["clip"] = time.perf_counter() - clock
    clip = FrozenCLIP(load_clip(out / "clip.pt", map_location=device), tokenizer)
    # the true z_i of every training image: the prior's target and the decoder's input
    z_bank = torch.cat([clip.encode_image(as_float(x, device))
                        for x in data["images"][sizes[0]].split(512)])

    @torch.no_grad()
    def preview(name, model, step):  # at each checkpoint: the EMA model on 8 fixed training examples
        idx, g, s = torch.arange(min(8, n)), torch.Generator().manual_seed(cfg.seed), cfg.sampling
        caps = [data["captions"][i] for i in idx]
        if name in ("prior", "ar_prior"):  # the training images nearest its sampled z_i
            z = model.sample(*clip.encode_text(caps), generator=g)
            x = as_float(data["images"][sizes[0]][(z @ z_bank.T).argmax(1).cpu()], "cpu")
        elif name == "decoder":  # from the true z_i, at half the sampling steps: a preview
            x = model.sample(z_bank[idx], *clip.tokenize(caps), steps=max(2, s.decoder_steps // 2),
                             guidance_scale=s.guidance, generator=g)
        else:  # an upsampler, on the true images of the size below
            k = STAGES.index(name) - 3
            lo = as_float(data["images"][sizes[k]][idx], device)
            x = model.sample(lo, steps=s.up_steps[k], generator=g)
        (out / "grids").mkdir(exist_ok=True)
        save_grid(x.cpu(), caps, out / "grids" / f"{name}_{step:05d}.png", ncol=8)
    run["preview"] = preview

    # stage 1: the prior P(z_i | y) [unCLIP] Sec. 2.2
    link(cfg, clip)
    opt_prior = getattr(cfg, f"opt_{prior_name(cfg)}")
    if "prior" in stages:
        clock = time.perf_counter()
        seed_stage("prior")
        prior = new_model(cfg, "prior").to(device)
        # the frozen text tower once for every caption, not once per step (a third of a prior
        # step); trailing padding cut, which the causal text tower allows
        enc = [clip.encode_text(data["captions"][i:i + 512]) for i in range(0, n, 512)]
        length = max(int(e[2].sum(1).max()) for e in enc)
        z_t_bank = torch.cat([e[0] for e in enc])
        states_bank = torch.cat([e[1][:, :length] for e in enc])
        mask_bank = torch.cat([e[2][:, :length] for e in enc])
        if cfg.prior_kind == "ar":  # PCA basis and bucket edges from the training embeddings
            log(f"ar prior: PCA keeps {prior.fit_codebook(z_bank, z_t_bank):.4f} of the z_i variance")

        def prior_batch(step, rows):
            idx = rows_of(step, opt_prior.batch, rows, "prior")
            return z_bank[idx], z_t_bank[idx], states_bank[idx], mask_bank[idx]

        prior, _ = train_stage(prior_name(cfg), prior, prior_batch, opt_prior, cfg, run)
        times["prior"] = time.perf_counter() - clock

    # stage 2: the decoder P(x | z_i, y), trained on the TRUE z_i of its target image; stages 3-4:
    # the upsamplers, on random crops of the high-resolution images [unCLIP] Sec. 2.1
    for name, size in zip(STAGES[2:], sizes, strict=True):
        if name in stages and size in data["images"]:
            clock = time.perf_counter()
            oc = getattr(cfg, f"opt_{name}")

            def batch_fn(step, rows, name=name, size=size, oc=oc):
                idx = rows_of(step, oc.batch, rows, name)
                x = as_float(data["images"][size][idx], device)
                if name != "decoder":  # an upsampler needs only the image
                    return (x,)
                return (x, z_bank[idx], *clip.tokenize([data["captions"][j] for j in idx]))

            seed_stage(name)
            train_stage(name, new_model(cfg, name).to(device), batch_fn, oc, cfg, run)
            times[name] = time.perf_counter() - clock
        elif name in stages:
            log(f"{name}: skipped, the data has no {size}x{size} images")

    if world > 1:
        torch.distributed.barrier()
    report = {}
    needed = [out / prior_file, out / "decoder.pt"]
    if rank == 0 and not all(p.exists() for p in needed):
        log(f"evaluation skipped: it needs {', '.join(p.name for p in needed)} in {out}")
    elif rank == 0:
        pipe = unclip.from_stage_checkpoints(out, device=device, prior_kind=cfg.prior_kind)
        guarded(out / "unclip.pt", lambda: unclip.save_pipeline(out / "unclip.pt", pipe))
        clock = time.perf_counter()
        report = evaluate(cfg, pipe, clip, z_bank, data, out, log)
        times["eval"] = time.perf_counter() - clock
        report |= {"seconds": {k: round(v, 1) for k, v in times.items()}, "config": asdict(cfg)}
        write_report(report, out, log)
    if world > 1:
        torch.distributed.destroy_process_group()
    return report


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(cfg: Config, pipe, clip: FrozenCLIP, z_bank, data, out: Path, log) -> dict:
    """The metrics on held-out captions: attribute accuracy, CLIP score, FD_CLIP, prior cosine."""
    s = cfg.sampling
    shapes = cfg.data == "shapes"
    if shapes:  # another seed: scenes and captions the training never saw
        res = cfg.clip.image_resolution
        held = Shapes(cfg.eval_size, sizes=(res,), seed=cfg.seed + 7919, holdout=holdout_pairs(cfg))
        held = shapes_collate([held[i] for i in range(cfg.eval_size)])
        captions, named, real = held["caption"], held["named"], held["images"][res]
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(data["captions"]), generator=g)[:cfg.eval_size]
        captions = [data["captions"][i] for i in idx]
        real = as_float(data["images"][cfg.clip.image_resolution][idx], "cpu")
    with diffusion.autocast(clip.device, cfg.precision):
        result = pipe.generate(captions, seed=cfg.seed, prior_steps=s.prior_steps, candidates=s.candidates,
                               decoder_steps=s.decoder_steps, decoder_guidance=s.guidance,
                               upsampler_steps=list(s.up_steps), progress=progress_log(pipe.stages, log))
    images = result["images"]
    z_t = clip.encode_text(captions)[0]
    z_gen, z_real = clip.encode_image(images[0]), clip.encode_image(real.to(clip.device))
    report = {"n": len(captions), "clip_score": clip_score(z_gen, z_t),
              "clip_score_real": clip_score(z_real, z_t), "fd_clip": frechet_distance(z_gen, z_real)}
    # the prior against the true z_i of each caption's image and two baselines [unCLIP] Sec. 5.1
    z_hat = result["z_i"]
    cos = lambda a: F.cosine_similarity(a, z_real).mean().item()
    report["prior_cosine"] = {"prior": cos(z_hat), "z_t as z_i": cos(z_t),
                              "mean z_i": cos(z_bank.mean(0, keepdim=True))}
    if shapes:
        ev = Evaluator()
        for x in (images[0], images[-1]):
            report[f"accuracy_{x.shape[-1]}"] = attribute_accuracy(ev.read(x.cpu()), named)
        nearest = (z_hat @ z_bank.T).argmax(1).cpu()  # retrieval: the real image closest to ẑ_i
        retrieved = as_float(data["images"][cfg.clip.image_resolution][nearest], "cpu")
        report["prior_retrieval"] = attribute_accuracy(ev.read(retrieved), named)
    for x in images:
        save_grid(x[:32].cpu(), captions[:32], out / f"samples_{x.shape[-1]}.png", ncol=8)
    return report


def progress_log(stages: list, log, every: float = 10.0):
    """A progress(stage, step, steps) for UnCLIP.generate: about every `every` seconds and at the end
    of each sampling stage, a line with the time left in that stage (stage time / steps done)."""
    clock = {"tick": time.perf_counter()}

    def progress(stage, i, n):
        now = time.perf_counter()
        if clock.get("stage") != stage:  # a new stage began at the previous stage's last step
            clock.update(stage=stage, start=clock["tick"], logged=clock["tick"], done=False)
        clock["tick"] = now
        if (i == n and not clock["done"]) or (i < n and now - clock["logged"] >= every):
            clock["logged"], clock["done"], left = now, i == n, (now - clock["start"]) / i * (n - i)
            log(f"eval {stage} ({stages.index(stage) + 1}/{len(stages)}) step {i}/{n} "
                f"stage eta {left / 60:.1f} min")
    return progress


def write_report(report: dict, out: Path, log) -> None:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in report.items():
        if key == "config":
            continue
        for k, v in value.items() if isinstance(value, dict) else [(None, value)]:  # a dict: a row each
            name, fmt = (key, ".4f") if k is None else (f"{key} {k}", ".3f")
            v = v["acc"] if isinstance(v, dict) and "acc" in v else v
            lines.append(f"| {name} | {v:{fmt}} |" if isinstance(v, float) else f"| {name} | {v} |")
    table = "\n".join(lines)
    save_atomic_text(out / "report.md", f"# tinyunclip toy run\n\n{table}\n")
    save_atomic_text(out / "report.json", json.dumps(report, indent=2, default=str))
    log(table)


if __name__ == "__main__":
    try:
        main()
    except (FloatingPointError, OSError) as e:  # a diverged loss, a full or read-only disk
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
