"""train_toy.py's configuration: the Config of every stage with the toy defaults, the --quick preset, the
command line, and what happens before any work: every option checked (each message names the flag and
what it must be), the device chosen, the run folder checked.

    cfg = Config(); set_option(cfg, "opt_decoder.steps", "8000"); check_config(cfg, list(STAGES), world=1)
"""

import argparse
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

import diffusion
import metrics
import real_data
from clip_frozen import CLIP, TOKENIZERS, CLIPConfig, FrozenCLIP, make_tokenizer, tokenizer_kind
from decoder import Decoder, DecoderConfig, toy_config
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from toy_data import Shapes
from upsample import Upsampler, UpsamplerConfig, stage_config


@dataclass
class Optim:
    steps: int  # optimizer steps for the stage
    batch: int  # examples per step (split across processes under torchrun)
    lr: float  # peak learning rate after warmup; cosine decay to lr_floor times it
    beta2: float = 0.999  # AdamW β2 ([unCLIP] Table 3: 0.999 decoder/upsamplers, 0.96 prior)
    weight_decay: float = 0.0  # [unCLIP] Table 3: 6e-2 for the prior, none for the decoder
    ema: float = 0.999  # EMA decay of the weights used for sampling (paper 0.9999 at 10^5+ steps; 0: none)
    eps: float = 1e-8  # AdamW ε
    lr_floor: float = 0.1  # the cosine decay's end, a fraction of lr

    def adamw(self, groups, device: torch.device) -> torch.optim.AdamW:
        # fused: the whole update in one kernel, 3-4x faster than foreach on a 2-core CPU (EXPERIMENTS.md,
        # "The optimizer kernel"); where torch has no fused AdamW, foreach
        kernel = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
        return torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, self.beta2), eps=self.eps,
                                 weight_decay=self.weight_decay, **kernel)


@dataclass
class Sampling:
    prior_steps: int = 64  # [unCLIP] Sec. 4: 64 prior steps
    candidates: int = 2  # best-of-2 prior samples by dot product with z_t [unCLIP] Sec. 2.2
    # the paper uses 250; with learned Σ [IDDPM] Sec. 4 keeps quality at 25-50 steps: 25 read the held-out
    # captions as 50 do, in a third less evaluation time (EXPERIMENTS.md, "Shorter schedules", experiment 2)
    decoder_steps: int = 25
    guidance: float = 3.0  # decoder classifier-free guidance scale [CFG]
    # [unCLIP] Table 3 uses 27 and 15 DDIM steps; our upsamplers start from bicubic and only add
    # edges, which fewer steps draw as well (README, "The upsamplers")
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
    # "bpe": OpenAI's CLIP tokenizer [CLIP], a Shapes caption in 12 tokens; "byte": UTF-8 bytes, 52 tokens,
    # which CLIP, the prior and the decoder's caption encoder all read: the run takes 1.3x as long
    # (EXPERIMENTS.md, "BPE against bytes"). It sets clip.vocab_size
    tokenizer: str = "bpe"
    # or fashion_mnist:PATH, cifar10:PATH (32x32 only: no upsamplers) or folder:PATH (the whole cascade
    # when its images are 128 px or more); real data trains on its training split, evaluates on the rest
    data: str = "shapes"
    train_size: int = 10000  # scenes rendered once into memory at 32, 64 and 128 pixels
    eval_size: int = 100  # held-out captions scored at the end
    # "colour shape" pairs (comma-separated) never rendered for training or evaluation: the
    # compositional-generalization experiment (experiments.py holdout) asks for them
    holdout: str = "purple triangle"
    # the fraction of training scenes with two objects, for the binding experiment [unCLIP] Sec. 7
    # (experiments.py binding); evaluation stays on one-object captions
    two_objects: float = 0.0
    prior_kind: str = "diffusion"  # "diffusion" or "ar" [unCLIP] Sec. 2.2
    log_every: int = 50
    ckpt_every: int = 500
    # k > 0: every k steps (a multiple of ckpt_every) also each stage's EMA weights alone, with the step and
    # the training seconds, as <stage>_<step>.pt: experiments.py recipes reads the decoder's
    snapshot_every: int = 0
    # CLIPConfig's defaults are the toy CLIP: 8x8-pixel patches, two blocks per tower and a 64-wide
    # text tower keep the CLIP and prior stages to a few minutes of a 2-core CPU
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    prior: DiffusionPriorConfig = field(default_factory=DiffusionPriorConfig)
    # 64 buckets per component, not the paper's 1024: at the toy budget 1024-way heads stay near a
    # uniform guess (README, "The prior")
    ar_prior: ARPriorConfig = field(default_factory=lambda: ARPriorConfig(buckets=64))
    # the toy preset beside the paper's DecoderConfig(): decoder.toy_config says what differs and why
    decoder: DecoderConfig = field(default_factory=toy_config)
    up1: UpsamplerConfig = field(default_factory=lambda: stage_config(1))
    up2: UpsamplerConfig = field(default_factory=lambda: stage_config(2))
    # CLIP learns position last (a late drop of the loss): 2000 steps of 128 read every attribute
    # zero-shot (EXPERIMENTS.md, "Each module on its own")
    # [CLIP] Sec. 2.5: AdamW β2 0.98, ε 1e-6, decoupled weight decay 0.2 (weights only), cosine to zero;
    # no EMA (the frozen CLIP is the last weights)
    opt_clip: Optim = field(default_factory=lambda: Optim(steps=2000, batch=128, lr=1e-3, beta2=0.98,
                                                          weight_decay=0.2, ema=0.0, eps=1e-6, lr_floor=0.0))
    # trained less, the prior's samples gather near the caption's mean z_i, lose the variety the caption
    # leaves open, and decode worse (EXPERIMENTS.md, "Prior diversity")
    opt_prior: Optim = field(default_factory=lambda: Optim(steps=6000, batch=64, lr=3e-3,
                                                           beta2=0.96, weight_decay=6e-2))
    # the AR prior's 64-way bucket heads learn more slowly than the diffusion prior's regression:
    # a higher lr and more steps
    opt_ar_prior: Optim = field(default_factory=lambda: Optim(steps=4000, batch=64, lr=3e-3,
                                                              beta2=0.96, weight_decay=6e-2))
    # EMA 0.995 (a ~200-step window): a longer average lags a net still improving fast. Batch 32: a
    # step of 32 images costs less per image than one of 16 and learns as much per image seen
    # (EXPERIMENTS.md, "Decoder recipes"); toy_config's decoder, a quarter fewer FLOPs a step than 32
    # channels at 32x32, spends them on 2600 steps, not 2200: shape is what it lacks (EXPERIMENTS.md,
    # "Shorter schedules")
    opt_decoder: Optim = field(default_factory=lambda: Optim(steps=2600, batch=32, lr=3e-3, ema=0.995))
    # the upsamplers start as bicubic (zero-initialised residual) and only add edges: a high lr
    # and a short EMA suit a few hundred steps (README, "The upsamplers")
    opt_up1: Optim = field(default_factory=lambda: Optim(steps=300, batch=16, lr=2e-3, ema=0.995))
    opt_up2: Optim = field(default_factory=lambda: Optim(steps=600, batch=8, lr=2e-3, ema=0.995))
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def prior_name(self) -> str:  # the prior's checkpoint name and config field
        return "prior" if self.prior_kind == "diffusion" else "ar_prior"

    @property
    def sizes(self) -> tuple:  # the image sizes of the decoder and the upsamplers
        return self.clip.image_resolution, self.up1.high_res, self.up2.high_res

    def data_sizes(self, stages: list) -> tuple:
        """The sizes to load: all three for Shapes; for a folder those its stages train on (a folder skips
        images smaller than the largest); IDX and CIFAR-10 exist at 32x32 only."""
        if self.data == "shapes":
            return self.sizes
        if self.data.startswith("folder:"):
            return self.sizes[:1 + ("up1" in stages or "up2" in stages) + ("up2" in stages)]
        return self.sizes[:1]

    @property
    def holdout_pairs(self) -> list:  # --holdout as (colour, shape) pairs
        return [tuple(p.split()) for p in self.holdout.split(",") if p.strip()]


# --quick: every stage end to end in about 2 min on a 2-core CPU; colour and background right,
# shape and position not yet (README, "Training"). A CLIP trained for far fewer steps has not yet
# separated its embeddings, and every later stage then reads the captions at chance. Its decoder:
# 300 steps of 16, 32 channels wide at 32x32; toy_config's 16 channels draw colour in 8 of the 24
# captions after so few steps (--quick --tokenizer byte --decoder.channels 16 --decoder.channel_mults
# 1,4,4, 2026-12-07, a 2-core AMD EPYC Zen 4 VM), the 32 in 19 (21 with BPE tokens).
QUICK = {"out": "runs/quick", "train_size": 2000, "eval_size": 24,
         "opt_clip.steps": 400, "opt_clip.batch": 64, "opt_prior.steps": 200, "opt_ar_prior.steps": 200,
         "opt_decoder.steps": 300, "opt_decoder.batch": 16, "decoder.channels": 32,
         "decoder.channel_mults": (1, 2, 2), "opt_up1.steps": 40, "opt_up2.steps": 30}
STAGES = ("clip", "prior", "decoder", "up1", "up2")
RUN_FILES = ("clip.pt", "prior.pt", "ar_prior.pt", "decoder.pt", "up1.pt", "up2.pt", "unclip.pt",
             "report.json")


# ----------------------------------------------------------------------------- options and checks
def leaves(obj, prefix=""):
    """(dotted name, owning dataclass, field) for every scalar/tuple field of a nested config."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", obj, f


def set_option(cfg: Config, name: str, value) -> None:
    """Set a dotted field; a str (from the command line) is read as the field's type, a tuple as a,b,c."""
    owner, f = next(((o, f) for dotted, o, f in leaves(cfg) if dotted == name), (None, None))
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
    if "drop" in name or name.endswith("prob") or name in ("two_objects", "lr_floor"):  # fractions
        return None if 0 <= value <= 1 else "must lie in [0, 1]"
    if name == "seed":  # train_toy's data streams, seed * 1_000_003 + stage * 100_003 + step, stay int64
        return None if 0 <= value < 2**32 else "must lie in [0, 2^32)"
    if name == "steps":  # ... and stay apart: one stage's steps never reach the next one's stream
        return None if 1 <= value <= 100_000 else "must lie in [1, 100000]"
    if name in ("weight_decay", "guidance", "text_layers", "clip_dim", "snapshot_every"):  # 0 allowed
        return None if value >= 0 else "must be >= 0"
    if name.endswith("_steps"):  # a respaced sampler keeps the first and the last timestep
        return None if value >= 2 else "must be >= 2"
    return None if value > 0 else "must be >= 1" if isinstance(value, int) else "must be > 0"


def check_config(cfg: Config, stages: list, world: int) -> None:
    """Every option checked before any work: numbers by _rule, the named choices, then whether the
    stages fit together (check_sizes, check_models)."""
    for dotted, owner, f in leaves(cfg):
        value = getattr(owner, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, int | float) and not isinstance(v, bool) and (why := _rule(f.name, v)):
                raise SystemExit(f"--{dotted} {_flag_value(cfg, f'--{dotted}')}: {why}")
    if cfg.precision not in diffusion.PRECISIONS:
        raise SystemExit(f"--precision {cfg.precision}: must be one of {', '.join(diffusion.PRECISIONS)}")
    if cfg.snapshot_every % cfg.ckpt_every:
        raise SystemExit(f"--snapshot_every {cfg.snapshot_every}: must be a multiple of --ckpt_every "
                         f"{cfg.ckpt_every}, the steps a snapshot can be written at")
    if cfg.tokenizer not in TOKENIZERS:
        raise SystemExit(f"--tokenizer {cfg.tokenizer}: must be one of {', '.join(TOKENIZERS)}")
    if cfg.prior_kind not in ("diffusion", "ar"):
        raise SystemExit(f"--prior_kind {cfg.prior_kind}: must be diffusion or ar")
    try:
        torch.device("cpu" if cfg.device == "auto" else cfg.device)
    except RuntimeError:
        raise SystemExit(f"--device {cfg.device}: must be auto, cpu, cuda, cuda:N or mps") from None
    kind, _, path = cfg.data.partition(":")
    if not (cfg.data == "shapes" or (kind in real_data.KINDS and path)):
        raise SystemExit(f"--data {cfg.data}: must be shapes, fashion_mnist:PATH, cifar10:PATH or "
                         "folder:PATH")
    if cfg.two_objects and cfg.data != "shapes":
        raise SystemExit(f"--two_objects {cfg.two_objects}: two-object scenes are Shapes' (--data shapes)")
    if kind in real_data.KINDS and not Path(path).exists():
        raise SystemExit(f"--data {cfg.data}: {path} does not exist")
    check_sizes(cfg, stages, world)
    check_models(cfg, stages)


def check_sizes(cfg: Config, stages: list, world: int) -> None:
    """Batches that split over the processes, image sizes that chain, sampling steps that exist."""
    s, res, up = cfg.sampling, cfg.clip.image_resolution, (cfg.up1, cfg.up2)
    if world > 10:  # train_toy's init seeds, seed * 1000 + stage * 10 + rank, would repeat across stages
        raise SystemExit(f"torchrun with {world} processes: train_toy.py takes at most 10")
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
    fits += [("--sampling.up_steps", n <= u.timesteps, f"must be <= --up{k + 1}.timesteps {u.timesteps}")
             for k, (n, u) in enumerate(zip(s.up_steps[:2], up, strict=False))]
    for flag, ok, why in fits:
        if not ok:
            raise SystemExit(f"{flag} {_flag_value(cfg, flag)}: {why}")
    if cfg.data.partition(":")[0] == "shapes":
        for flags, kw in (("--clip.image_resolution, --up1.high_res, --up2.high_res",
                           {"sizes": cfg.sizes}), ("--holdout", {"holdout": cfg.holdout_pairs})):
            try:
                Shapes(1, **kw)
            except ValueError as e:
                raise SystemExit(f"{flags}: {e}") from None


def check_models(cfg: Config, stages: list) -> None:
    """Each model built once, on the CPU, so its own checks run (the global RNG is left as it was)."""
    tokenizer = make_tokenizer(cfg.tokenizer, cfg.clip.context_length)
    if cfg.clip.vocab_size not in (CLIPConfig.vocab_size, tokenizer.vocab_size):  # set, and not to these ids
        raise SystemExit(f"--clip.vocab_size {cfg.clip.vocab_size}: the {cfg.tokenizer} tokenizer has "
                         f"{tokenizer.vocab_size} ids and sets it; leave it out or pick --tokenizer")
    cfg.clip.vocab_size = tokenizer.vocab_size  # the tokenizer's ids are the CLIP's vocabulary
    with torch.random.fork_rng(devices=[]):
        for name in ("clip", *[n for n in stages if n != "clip"]):
            try:  # the fields' own checks first: a command line sets them after __post_init__ ran
                replace(getattr(cfg, cfg.prior_name if name == "prior" else name))
                model = new_model(cfg, name)
            except ValueError as e:
                flag = cfg.prior_name if name == "prior" else name
                raise SystemExit(f"--{flag}.* do not fit: {e}") from None
            if name == "clip":  # the later stages take these fields from the CLIP
                link(cfg, FrozenCLIP(model, tokenizer))
            elif name != "prior":  # a U-Net halves its input len(channel_mults) - 1 times
                c, flag = getattr(cfg, name), f"--{name}.channel_mults"
                size = c.image_size if name == "decoder" else c.high_res // (2 if c.crop else 1)
                if size % model.net.factor:
                    raise SystemExit(f"{flag} {_flag_value(cfg, flag)}: its {size}x{size} "
                                     f"{'crops' if name != 'decoder' else 'images'} are not a multiple "
                                     f"of {model.net.factor}")


def new_model(cfg: Config, stage: str) -> nn.Module:
    """The freshly initialised model a stage trains."""
    if stage == "prior":
        return (DiffusionPrior if cfg.prior_kind == "diffusion" else ARPrior)(getattr(cfg, cfg.prior_name))
    return {"clip": CLIP, "decoder": Decoder, "up1": Upsampler, "up2": Upsampler}[stage](getattr(cfg, stage))


def link(cfg: Config, clip: FrozenCLIP) -> None:
    """The fields the prior and the decoder take from the frozen CLIP."""
    p, d = getattr(cfg, cfg.prior_name), cfg.decoder
    p.clip_dim, p.text_width = clip.embed_dim, clip.text_width
    d.clip_dim, d.image_size = clip.embed_dim, clip.model.config.image_resolution
    d.vocab_size, d.context_length = clip.vocab_size, clip.context_length


def _flag_value(cfg: Config, flag: str):
    return option_text(next(getattr(o, f.name) for dotted, o, f in leaves(cfg) if dotted == flag[2:]))


def parse_args(argv=None, description: str | None = None) -> tuple[Config, argparse.Namespace]:
    cfg = Config()
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny preset: all stages in about 2 minutes")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="train the stages in --stages afresh (the files replaced kept as *.old until then)")
    for dotted, owner, f in leaves(cfg):
        p.add_argument(f"--{dotted}", default=None, metavar=type(getattr(owner, f.name)).__name__.upper(),
                       help=f"(default: {getattr(owner, f.name)})")
    args = p.parse_args(argv)
    given = {dotted: v for dotted, _, _ in leaves(cfg) if (v := getattr(args, dotted)) is not None}
    for name, value in ((QUICK if args.quick else {}) | given).items():  # the command line wins over --quick
        set_option(cfg, name, value)
    return cfg, args


def config_args(saved: dict) -> list:
    """The command-line options that rebuild a saved config (asdict(Config), via JSON)."""
    args = []
    for dotted, _, f in leaves(Config()):
        *path, key = dotted.split(".")
        section = saved
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict):
            continue
        if key in section:
            value = section[key]
        elif path and f.default is not MISSING:  # a field newer than the run: its class default, what
            value = f.default  # older code did (a preset, e.g. decoder.toy_config, may since set it)
        else:  # a top-level field newer than the run keeps train_toy's default
            continue
        if value is not None:
            args += [f"--{dotted}", option_text(value)]
    clip = saved.get("clip")
    if "tokenizer" not in saved and isinstance(clip, dict) and "vocab_size" in clip:  # the CLIP's vocabulary
        args += ["--tokenizer", tokenizer_kind(clip["vocab_size"])]  # says which it read
    return args


def option_text(value) -> str:
    """A config value as the command line writes it (a tuple as a,b,c; an empty one as "")."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def stage_options(cfg: Config, name: str, clip_id: str) -> dict:
    """What a stage is trained under besides its model config, which --resume must find unchanged: its AdamW
    settings (steps may grow), the data, the seed and, after CLIP, the fingerprint of the CLIP it reads."""
    keep = {k: v for k, v in asdict(getattr(cfg, f"opt_{name}")).items() if k != "steps"}
    keep |= {k: getattr(cfg, k) for k in ("seed", "data", "train_size", "holdout", "two_objects")}
    keep |= {"clip": clip_id} if name in ("prior", "ar_prior", "decoder") else {}
    return json.loads(json.dumps(keep))


def stage_of(path: Path) -> str:  # the --stages name of a stage checkpoint (ar_prior.pt: prior)
    return "prior" if path.stem == "ar_prior" else path.stem


def refuse_changed(path: Path, saved: dict, wanted: dict, flag) -> None:
    """SystemExit naming each field of wanted that saved holds with another value, as flag(k) writes it."""
    if saved.get("clip", wanted.get("clip")) != wanted.get("clip"):
        raise SystemExit(f"{path} was trained on another CLIP than the clip.pt beside it: pass --overwrite "
                         f"--stages {stage_of(path)} to train it afresh on it, or --out for another folder")
    if shown := [(k, option_text(saved[k]) or '""', option_text(v) or '""') for k, v in wanted.items()
                 if k in saved and saved[k] != v]:
        other = ", ".join(f"{flag(k)} {a} (now {b})" for k, a, b in shown)
        raise SystemExit(f"{path} was trained with {other}: pass those options to resume it, "
                         f"--overwrite to train the stages afresh, or --out for another folder")


def check_folder(out: Path, trained: list, args, rank: int) -> list:
    """Refuse a folder that holds a run unless --resume or --overwrite says what to do with it:
    a forgotten --resume must not retrain (and so overwrite) stages that are already trained. --overwrite
    sets the files it replaces aside as NAME.old (trained: the stages' checkpoints): each goes once its
    replacement is saved, and train_toy.main puts back those not replaced when the run ends or fails (not
    the report or unclip.pt once a stage saved, nor a stage the data cannot train). -> the files set aside."""
    if args.resume and args.overwrite:
        raise SystemExit("pass --resume (continue the run) or --overwrite (start afresh), not both")
    found = [n for n in (*RUN_FILES, *(f"{f}.old" for f in RUN_FILES)) if (out / n).exists()]
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
    if not (args.overwrite and rank == 0):
        return []
    (out / "classifier.pt").unlink(missing_ok=True)  # trained on the data, which may differ
    return metrics.set_aside(map(out.joinpath, ("report.json", "report.md", "unclip.pt", *trained)))


def prepare(cfg: Config, args: argparse.Namespace) -> tuple[list, torch.device, int, int, list]:
    """Every check before any work, then the device, the process group (under torchrun) and the run
    folder: (stages, device, rank, world, the files --overwrite set aside)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    check_config(cfg, stages, world)
    if cfg.device == "auto":
        mps = torch.backends.mps.is_available()
        cfg.device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    device = torch.device(cfg.device)
    if (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()) or (
            device.type == "mps" and not torch.backends.mps.is_available()):
        raise SystemExit(f"--device {cfg.device}: this torch sees no such device (CUDA devices: "
                         f"{torch.cuda.device_count()})")
    if world > 1:  # torchrun sets RANK / WORLD_SIZE / LOCAL_RANK
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
            torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    metrics.reuse_freed_memory()
    if "clip" not in stages and not (clip := Path(cfg.out) / "clip.pt").exists():  # all later stages read it
        raise SystemExit(f"--stages {cfg.stages}: {clip} does not exist; add clip to --stages")
    trained = [f"{cfg.prior_name if s == 'prior' else s}.pt" for s in stages]
    return stages, device, rank, world, check_folder(Path(cfg.out), trained, args, rank)
