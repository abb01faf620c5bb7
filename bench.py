"""How fast is each unCLIP model at its toy default config on this machine, and where does the time go?

    python bench.py --threads 2 --reps 5 --json runs/bench.json   # every model, tables, profiles
    python bench.py --only decoder,up1 --precision both           # some models, fp32 and bf16
    python bench.py --peer --only prior                           # beside DALLE2-pytorch, if importable
    python bench.py --only decoder --channels-last --compile      # the U-Nets NHWC, torch.compile'd
    python bench.py --quick                                       # smoke test: 1 rep, 2 sampling steps

Models, batch sizes and sampling steps are train_toy.py's, on random data held as train_toy holds it.
GFLOP/example: a training forward + backward, by torch.utils.flop_counter. train ex/s: train_toy's step
(batch, forward, backward, clipping, AdamW, EMA); first step s: the first, with --compile its compiling.
% of peak: against the measured matmul peak of the same precision (both printed, and whether bf16 is native).
Memory: CUDA peak allocated, else max-RSS growth (one --only for a clean number; --compile: the compiler's
too). Times: medians of --reps windows. The profile (torch.profiler: --profile-steps training steps, and a
decoder sampling call, the evaluation's work) gives each op's time to the group of its outermost caller that
has one; "other" is every other op, compiled kernels and the Python time between (CUDA: device time).
"""

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import metrics
from clip_frozen import CLIP, FrozenCLIP, make_tokenizer
from decoder import Decoder, DecoderConfig
from diffusion import autocast, autocast_network, cpu_has_native_bf16
from prior import ARPrior, DiffusionPrior, DiffusionPriorConfig, trim_padding
from toy_data import make_caption, sample_scene
from train_toy import Config, Optim, as_float
from upsample import Upsampler, resize

MODELS = ("clip", "prior", "ar_prior", "decoder", "up1", "up2")
GROUPS = ("convolutions", "GroupNorm", "attention", "matmul/linear", "optimizer", "EMA", "data", "host syncs",
          "other")
SYNCS = {"item", "localscalardense", "isnonzero", "nonzero", "cudastreamsynchronize", "cudadevicesynchronize"}
NAMED = (("conv", "convolutions"), ("groupnorm", "GroupNorm"), ("scaleddotproduct", "attention"))
MATMULS = {"linear", "addmm", "mm", "bmm", "baddbmm", "matmul", "einsum"}

# The fused CPU attention op has no FLOP formula (it counts 0): give it torch's CUDA attention ones.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def sync(device: torch.device) -> None:
    if device.type in ("cuda", "mps"):  # GPUs run asynchronously: wait before reading the clock
        getattr(torch, device.type).synchronize()


def window(fn, calls: int, device) -> float:
    """Seconds per call of `calls` back-to-back calls of fn."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def median_time(fn, reps: int, device, warmup: int = 1, min_window: float = 0.0) -> float:
    """Median seconds per call of fn over `reps` timed windows, after `warmup` untimed calls. With
    min_window > 0, a window repeats fn until it lasts about that long (one untimed call counts how many)."""
    for _ in range(warmup):
        fn()
    calls = max(1, math.ceil(min_window / max(window(fn, 1, device), 1e-9))) if min_window > 0 else 1
    return statistics.median(window(fn, calls, device) for _ in range(reps))


def count_flops(loss_fn) -> int:
    """FLOPs of one forward + backward of loss_fn() -> scalar (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def resolve(device, precision: str) -> str:
    """"fp32" or "bf16": what diffusion.autocast(device, precision) runs the networks in."""
    with autocast(device, precision):
        return "bf16" if torch.is_autocast_enabled(torch.device(device).type) else "fp32"


def unit(n: int, d: int, device) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, device=device), dim=-1)


def smooth_images(n: int, size: int, device) -> torch.Tensor:
    """[n, 3, size, size] uint8 as train_toy stores renders, smooth like Shapes (JPEG is slower on noise)."""
    x = F.interpolate(torch.rand(n, 3, 4, 4, device=device), size=size, mode="bilinear")
    return (x * 255).round().to(torch.uint8)


def build(name: str, cfg: Config, device, n_sample: int, quick: bool, one_width: bool = False) -> dict:
    """{model, batch, data(): one training batch, loss(*batch), sample(k, steps), steps, optim, ema}.
    one_width: every batch's captions at the bank's width, not cut per batch (a compiled net's shapes)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    s, cc, sample, n_steps = cfg.sampling, cfg.clip, None, None
    steps = lambda n: 2 if quick else n  # --quick: 2 sampling steps, enough to run every line
    optim = getattr(cfg, "opt_prior" if name == "ar_prior" else f"opt_{name}")
    N = 4 * max(optim.batch, n_sample)  # the bank a batch is drawn from, as train_toy's rows_of does
    rows = lambda: torch.randint(0, N, (optim.batch,))
    rng, tokenizer = np.random.default_rng(0), make_tokenizer(cfg.tokenizer, cc.context_length)
    cc.vocab_size = tokenizer.vocab_size  # as train_config.check_models
    captions = [make_caption(sample_scene(rng), rng)[0] for _ in range(N)]  # no rendering: their lengths
    text = trim_padding(*tokenizer(captions))  # once, as train_toy.clip_stage: a step indexes it
    cut = (lambda *a: a) if one_width else trim_padding  # and cuts its batch's padding, as train_toy's
    tokenize = lambda idx: (a.to(device) for a in cut(text[0][idx], text[1][idx]))
    if name == "clip":  # CLIP.loss: contrastive, the captions in length-sorted groups
        model, images = CLIP(cc), smooth_images(N, cc.image_resolution, device)
        data = lambda: (lambda i: (as_float(images[i], device), *tokenize(i)))(rows())
    elif name in ("prior", "ar_prior"):  # caption states of an untrained frozen CLIP: same shapes
        clip = FrozenCLIP(CLIP(cc), tokenizer, device=device)
        z_t, states, mask = clip.encode_text(captions)  # train_toy encodes every caption once
        z_i = unit(N, cc.embed_dim, device)
        pcfg = cfg.prior if name == "prior" else cfg.ar_prior
        pcfg.clip_dim, pcfg.text_width = clip.embed_dim, clip.text_width  # as train_toy.main
        model = (DiffusionPrior if name == "prior" else ARPrior)(pcfg)
        data = lambda: (lambda i: (z_i[i], z_t[i], states[i], mask[i]))(rows().to(device))
        if name == "prior":  # best-of-k: the k candidates run as one batch
            n_steps = steps(s.prior_steps)
            sample = lambda k, n=n_steps: model.sample(z_t[:k], states[:k], mask[:k], steps=n,
                                                       candidates=s.candidates)
        else:
            model.fit_codebook(unit(4096, cc.embed_dim, device), unit(4096, cc.embed_dim, device))
            n_steps = pcfg.pca_dims + 1  # one network call per token
            sample = lambda k, n=None: model.sample(z_t[:k], states[:k], mask[:k], candidates=s.candidates)
    elif name == "decoder":
        dc, n_steps = cfg.decoder, steps(s.decoder_steps)  # fields set as train_toy.main does
        dc.clip_dim, dc.image_size = cc.embed_dim, cc.image_resolution
        dc.vocab_size, dc.context_length = tokenizer.vocab_size, cc.context_length
        model, images = Decoder(dc), smooth_images(N, dc.image_size, device)
        z_i = unit(N, dc.clip_dim, device)
        data = lambda: (lambda i: (as_float(images[i], device), z_i[i], *tokenize(i)))(rows())
        tokens, mask = tokenize(torch.arange(n_sample))
        n = int(mask.sum(1).max())  # sampling cuts trailing padding, as unclip.generate does
        sample = lambda k, m=n_steps: model.sample(z_i[:k], tokens[:k, :n], mask[:k, :n], steps=m,
                                                   guidance_scale=s.guidance)  # batched CFG inside
    else:
        uc, n_steps = getattr(cfg, name), steps(s.up_steps[int(name[-1]) - 1])
        model, images = Upsampler(uc), smooth_images(N, uc.high_res, device)
        lo = resize(as_float(images[:n_sample], device), uc.low_res, "area")
        data = lambda: (as_float(images[rows()], device),)  # the loss crops a quarter, as in training
        sample = lambda k, n=n_steps: model.sample(lo[:k], steps=n)
    return dict(model=model.to(device), data=data, loss=model.loss, sample=sample, steps=n_steps,
                optim=optim, batch=optim.batch, ema=optim.ema > 0)


def training_step(case: dict):
    """train_toy.train_stage's step with its Optim, phases labelled for the profiler; no .item()."""
    model, o = case["model"], case["optim"]
    params, groups = list(model.parameters()), getattr(model, "param_groups", model.parameters)()
    opt = o.adamw(groups, params[0].device)
    ema = [p.detach().clone() for p in params] if case["ema"] else None

    def step():
        with record_function("data"):
            batch = case["data"]()
        loss = case["loss"](*batch)  # the network under autocast, as in training (see bench_model)
        loss.backward()
        with record_function("optimizer"):
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)  # train_stage's place is before backward: same work
        if ema is not None:
            with torch.no_grad(), record_function("ema"):
                torch._foreach_lerp_(ema, params, 1 - o.ema)
    return step


def bench_model(name: str, device, peak: float, reps: int = 5, quick: bool = False, n_sample: int = 8,
                cfg: Config | None = None, precision: str = "auto", profile_steps: int = 0,
                channels_last: bool = False, compile_unet: bool = False) -> dict:
    """Measure one model (see the module docstring); peak is the matmul FLOP/s to compare with.
    profile_steps > 0 adds "profile": {"train": breakdown, and for the decoder "sample": per step}.
    The U-Nets run channels-last on CUDA (as train_toy) and with channels_last, compiled with compile_unet."""
    device, cuda = torch.device(device), torch.device(device).type == "cuda"
    torch.manual_seed(0)
    rss = metrics.max_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    case = build(name, cfg or Config(), device, n_sample, quick, one_width=compile_unet and name == "decoder")
    model, batch, unet = case["model"].train(), case["batch"], name in ("decoder", "up1", "up2")
    if last := unet and (channels_last or cuda):
        model.to(memory_format=torch.channels_last)
    with autocast(device, precision):  # as the hooks below run the net; eager, as the counter needs
        flops = count_flops(lambda: case["loss"](*case["data"]())) / batch  # also a warm-up step
    if compiled := unet and compile_unet:  # the same parameters; the autocast hooks go around it
        torch._dynamo.reset()  # a fresh cache: the three U-Nets share UNet.forward's recompile limit
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # an error, not a silent fall-back to eager
        model.net = torch.compile(model.net, dynamic=False, fullgraph=True)  # static: a graph per shape, mode
    autocast_network(getattr(model, "net", model), device, precision)
    step = training_step(case)
    first_step_s = window(step, 1, device)
    step_s = median_time(step, reps, device, warmup=1 if quick else 3, min_window=0.0 if quick else 1.0)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else metrics.max_rss_mb() - rss
    result = {"params": sum(p.numel() for p in model.parameters()), "batch": batch,
              "precision": resolve(device, precision), "gflop_per_example": flops / 1e9,
              "layout": "channels-last" if last else "nchw" if unet else None, "compiled": compiled,
              "first_step_s": first_step_s, "train_step_s": step_s, "train_examples_per_s": batch / step_s,
              "peak_fraction": flops * batch / step_s / peak, "peak_mem_mb": mem,
              "peak_mem_kind": "cuda max_memory_allocated" if cuda else "process max-RSS growth",
              "sample_s_per_image": None, "sample_batch": None, "sample_steps": case["steps"]}
    if profile_steps:
        result["profile"] = {"train": profiled(step, profile_steps, device)}
    if case["sample"] is not None:
        model.eval()
        with torch.no_grad(), autocast(device, precision):
            case["sample"](n_sample, 2)  # warm-up at the timed batch (a compiled net's shapes); ar_prior: all
            result["sample_s_per_image"] = median_time(lambda: case["sample"](n_sample), reps, device,
                                                       warmup=0) / n_sample
            if profile_steps and name == "decoder":  # the evaluation's sampling, per DDIM step
                k = max(2, profile_steps)  # a respacing needs 2 steps at least
                sample = profiled(lambda: case["sample"](n_sample, k), 1, device)
                result["profile"]["sample"] = sample | {"step_s": sample["step_s"] / k}
        result["sample_batch"] = n_sample
    return result


def group_of(event) -> str | None:
    """The group of one profiler event by its own name (None: decided by its callers, or other):
    optimizer = clipping, AdamW, zero_grad; data = batch and tokenizing; attention = the attention
    kernel (its projections: matmul/linear); host syncs = ops that read a value back (.item())."""
    if event.name in ("data", "ema", "optimizer") or event.name.startswith("Optimizer."):
        return {"data": "data", "ema": "EMA"}.get(event.name, "optimizer")
    # "aten::native_group_norm", "autograd::engine::evaluate_function: NativeGroupNormBackward0"
    key = event.name.replace(":", " ").split()[-1].lower().replace("_", "").removesuffix("0")
    key = key.removesuffix("backward")
    named = next((g for part, g in NAMED if part in key), None)
    return named or ("matmul/linear" if key in MATMULS else "host syncs" if key in SYNCS else None)


def breakdown(prof, cuda: bool) -> dict:
    """Percent of the "step" ranges' time per group: each event's self time goes to the group of
    its outermost caller that has one. CPU: of the steps' wall time, the untraced Python time in
    "other"; CUDA: of the device time of their kernels."""
    events = prof.events()
    steps = [e for e in events if e.name == "step"]
    seconds = {g: 0.0 for g in GROUPS}
    for e in events:
        chain = [e]
        while chain[-1].cpu_parent is not None:
            chain.append(chain[-1].cpu_parent)
        if chain[-1].name != "step" or e.name == "step":
            continue
        group = next((g for g in map(group_of, reversed(chain)) if g is not None), "other")
        seconds[group] += (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6
    traced = sum(seconds.values())
    total = traced if cuda else sum(s.cpu_time_total for s in steps) / 1e6
    seconds["other"] += total - traced
    return {"step_s": total / len(steps), "traced_fraction": traced / total,
            "percent": {g: 100 * t / total for g, t in seconds.items()}}


def profiled(fn, calls: int, device) -> dict:
    """breakdown() of `calls` calls of fn, each a "step" range."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            with record_function("step"):
                fn()
            sync(device)
    return breakdown(prof, cuda)


def peer_comparison(device, precision: str, rounds: int, quick: bool, compile_unet=False) -> dict:
    """Our diffusion prior and decoder (its net compiled with compile_unet; the peer's eager) beside
    DALLE2-pytorch's at the nearest parameter count, in one process, interleaved (ours, peer, ours, ...),
    each ratio taken pair by pair on the same machine state. {"skipped": reason} when not importable."""
    if importlib.util.find_spec("dalle2_pytorch") is None:
        return {"skipped": "dalle2_pytorch is not importable in this interpreter; install it in a "
                           "separate environment (never a dependency of this project) and run there"}
    import dalle2_pytorch as peer
    count, D, dim, rows = lambda m: sum(p.numel() for p in m.parameters()), 128, 32 if quick else 64, []

    def trainer(m, loss):  # both models' whole loss under the precision's autocast, handed on in fp32
        loss = autocast(device, precision)(loss)
        return training_step({"model": m, "data": tuple, "loss": lambda: loss().float(), "ema": False,
                              "optim": Optim(1, 1, 1e-4)})

    def compare(name, ours, theirs, ours_fn, peer_fn, items):
        ours_fn(), peer_fn()  # warm-up
        t = [(window(ours_fn, 1, device), window(peer_fn, 1, device)) for _ in range(rounds)]
        ratios = [p / o for o, p in t]  # peer time / our time: our speedup
        rate = lambda k: items / statistics.median(pair[k] for pair in t)
        rows.append({"name": name, "our_params": count(ours), "peer_params": count(theirs), "ours": rate(0),
                     "peer": rate(1), "speedup": statistics.median(ratios), "speedup_min": min(ratios),
                     "speedup_max": max(ratios)})

    # prior: width 128, depth 6, 4 heads; the peer without text encodings (4 tokens), ours one token
    net = peer.DiffusionPriorNetwork(dim=D, depth=6, dim_head=32, heads=4, max_text_len=0)
    pp = peer.DiffusionPrior(net=net, image_embed_dim=D, timesteps=1000, cond_drop_prob=0.1,
                             condition_on_text_encodings=False).to(device)
    op = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=D, width=D, layers=6, heads=4)).to(device)
    zt, zi, states = unit(256, D, device), unit(256, D, device), torch.zeros(256, 1, D, device=device)
    mask = torch.ones(256, 1, dtype=torch.bool, device=device)
    compare("prior train ex/s, width 128, depth 6, batch 256", op, pp,
            trainer(op, lambda: op.loss(zi, zt, states, mask)),
            trainer(pp, lambda: pp(text_embed=zt, image_embed=zi.clone())), 256)
    pd, unet, od = peer_decoders(peer, dim, D, device)
    if how := ", compiled" * compile_unet:  # as bench_model compiles it; the peer's runs eager
        torch._dynamo.reset()
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        od.net = torch.compile(od.net, dynamic=False, fullgraph=True)
    x01, emb = torch.rand(32, 3, 32, 32, device=device), unit(32, D, device)
    compare(f"decoder train img/s, width {dim}, batch 32{how}", od, unet,
            trainer(od, lambda: od.loss(x01 * 2 - 1, emb, None, None)),
            trainer(pd, lambda: pd(x01, image_embed=emb)), 32)
    od.eval(), pd.eval()
    with torch.no_grad(), autocast(device, precision):
        compare(f"decoder sample img/s, 4 images, 50 DDIM steps, no guidance, width {dim}{how}", od, unet,
                lambda: od.sample(emb[:4], None, None, steps=50, guidance_scale=1.0, eta=0.0),
                lambda: pd.sample(image_embed=emb[:4]), 4)
    head = ["DALLE2-pytorch beside ours", "params ours / peer", "ours /s", "peer /s", "speedup (min–max)"]
    return {"rows": rows, "table": markdown(head, [
        [r["name"], f"{r['our_params'] / 1e6:.2f}M / {r['peer_params'] / 1e6:.2f}M", f"{r['ours']:.3g}",
         f"{r['peer']:.3g}", f"{r['speedup']:.2f} ({r['speedup_min']:.2f}–{r['speedup_max']:.2f})"]
        for r in rows])}


def peer_decoders(peer, dim: int, D: int, device):
    """DALLE2-pytorch's Decoder and its Unet(dim, (1, 2, 2)) with learned variance, and of three of
    ours (width dim, learned variance) the one nearest its parameter count."""
    count = lambda m: sum(p.numel() for p in m.parameters())
    unet = peer.Unet(dim=dim, image_embed_dim=D, cond_dim=D, channels=3, dim_mults=(1, 2, 2),
                     cond_on_text_encodings=False)
    pd = peer.Decoder(unet=unet, image_sizes=(32,), timesteps=1000, sample_timesteps=50,
                      learned_variance=True, image_cond_drop_prob=0.1, text_cond_drop_prob=0.5).to(device)
    unet = pd.unets[0]  # the Decoder rebuilds the Unet it is given: patch its own copy
    if isinstance(unet.image_to_tokens, nn.Identity):  # the library's Identity when widths match
        unet.image_to_tokens = nn.Sequential(nn.Linear(D, 4 * D), nn.Unflatten(1, (4, D))).to(device)
    od = min((Decoder(DecoderConfig(channels=dim, channel_mults=(1, 2, 2), num_res_blocks=b, clip_dim=D,
                                    attention_resolutions=a, text_layers=0, learn_sigma=True))
              for b, a in ((2, (16, 8)), (1, (16, 8)), (1, (8,)))),
             key=lambda m: abs(count(m) - count(unet))).to(device)
    return pd, unet, od


def markdown(head: list, rows: list) -> str:
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in [head, ["---"] * len(head), *rows])


def table(report: dict) -> str:
    mem = "peak mem MB" if report["device"] == "cuda" else "max-RSS growth MB"
    rows = [[" ".join([name, *filter(None, [r["layout"], "compiled" * r["compiled"]])]), r["precision"],
             f"{r['params'] / 1e6:.2f}M", f"{r['gflop_per_example']:.3g}", f"{r['first_step_s']:.3g}",
             f"{r['train_examples_per_s']:.3g}", f"{100 * r['peak_fraction']:.1f}",
             "–" if r["sample_s_per_image"] is None else f"{r['sample_s_per_image']:.3g}",
             f"{r['peak_mem_mb']:.0f}"]
            for models in report["models"].values() for name, r in models.items()]
    peaks = ", ".join(f"{p} {m['gflops']:.4g} GFLOP/s ({m['n']}x{m['n']})"
                      for p, m in report["matmul"].items())
    head = ["model", "precision", "params", "GFLOP/example (train)", "first step s", "train ex/s",
            "% of matmul peak", "sample s/image", mem]
    return markdown(head, rows) + (f"\n\n{report['machine']}; matmul peak {peaks}; {report['bf16']}; "
                                   f"median of {report['reps']} reps")


def profile_table(report: dict) -> str:
    rows = [[f"{name} train" if kind == "train" else f"{name} sampling, per step", r["precision"],
             f"{1e3 * b['step_s']:.1f}", *(f"{b['percent'][g]:.1f}" for g in GROUPS)]
            for models in report["models"].values() for name, r in models.items()
            for kind, b in r.get("profile", {}).items()]
    return (markdown(["step", "precision", "ms", *GROUPS], rows)
            + "\n\n% of the profiled step time (torch.profiler; groups: bench.py's docstring; in CPU bf16 "
              "diffusion.attention's plain products count in matmul/linear, its softmax in other)")


def matmul_peaks(device, native: bool, quick: bool, reps: int) -> dict:
    """{"fp32": {"n", "gflops"}, "bf16": ...}: each precision's measured matmul throughput, 2 n^3 FLOP per
    [n, n] @ [n, n], median of reps (emulated bf16 is many times slower: a smaller n keeps it short)."""
    n = {"fp32": 256 if quick else 8192 if device.type == "cuda" else 2048}
    n["bf16"], peaks = n["fp32"] if native or quick else 1024, {}
    for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n[p], n[p], device=device, dtype=dtype) for _ in range(2))
        seconds = median_time(lambda a=a, b=b: a @ b, max(reps, 3), device, warmup=2)
        peaks[p] = {"n": n[p], "gflops": 2 * n[p] ** 3 / seconds / 1e9}
    return peaks


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto = cuda, else mps, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, --quick 1)")
    p.add_argument("--only", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "both"),
                   help="autocast of the networks (diffusion.autocast); both = fp32 then bf16")
    p.add_argument("--channels-last", action="store_true", help="the U-Nets channels-last (CUDA: always)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Nets (inductor; --peer: ours)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps per profile; 0 = no profile")
    p.add_argument("--peer", action="store_true", help="also DALLE2-pytorch beside ours (first --precision)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, 2 sampling steps, small matmul")
    args = p.parse_args(argv)
    if any(v is not None and v < n for v, n in ((args.reps, 1), (args.threads, 1), (args.profile_steps, 0))):
        p.error("--reps and --threads must be >= 1, --profile-steps >= 0")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or set(names) - set(MODELS):
        raise SystemExit(f"--only {args.only!r}: choose from {','.join(MODELS)}")
    reps = args.reps or (1 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics.reuse_freed_memory()  # as train_toy: ours and the peer's alike
    auto = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda":  # as train_toy: TF32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    precisions = ["fp32", "bf16"] if args.precision == "both" else [resolve(device, args.precision)]
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    report = {"device": device.type, "machine": metrics.machine(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "reps": reps, "quick": args.quick, "native_bf16": native,
              "command": " ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)]),
              "matmul": matmul_peaks(device, native, args.quick, reps), "models": {}}
    ratio = report["matmul"]["bf16"]["gflops"] / report["matmul"]["fp32"]["gflops"]
    report["bf16"] = (f"bf16 {'native' if native else 'emulated (no AVX512-BF16/AMX)'} on this "
                      f"{device.type}: its matmul {ratio:.3g}x fp32's")
    print(report["bf16"], file=sys.stderr, flush=True)
    # train_toy trains CLIP in fp32: its one row, in the first pass
    for runs_in, name in dict.fromkeys(("fp32" if n == "clip" else p, n) for p in precisions for n in names):
        print(f"bench: {name} ({runs_in}) ...", file=sys.stderr, flush=True)
        report["models"].setdefault(runs_in, {})[name] = bench_model(
            name, device, report["matmul"][runs_in]["gflops"] * 1e9, reps, args.quick, precision=runs_in,
            profile_steps=args.profile_steps, channels_last=args.channels_last, compile_unet=args.compile)
    print(table(report))
    if args.profile_steps > 0:
        print("\n" + profile_table(report))
    if args.peer:
        report["peer"] = peer_comparison(device, precisions[0], reps, args.quick, args.compile)
        print("\n" + report["peer"].get("skipped", report["peer"].get("table")))
    if args.json:  # its folder made if missing: a finished benchmark is not lost
        metrics.save_atomic_text(args.json, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
