"""How fast is each unCLIP model at its toy default config, on this machine?

    python bench.py                                      # every model, a markdown table
    python bench.py --threads 2 --reps 5 --json runs/bench.json
    python bench.py --only decoder,up1                   # some of the models
    python bench.py --quick                              # smoke test: 1 rep, 2 sampling steps

Models and batch sizes are the ones train_toy.py trains (its Config, with the CLIP-derived fields
filled as its main() fills them), on random inputs of the right shapes: Shapes captions (no
rendering), unit-norm embeddings, images in [-1, 1]. Per model:
    params          parameters (buffers not counted)
    GFLOP/example   one training forward + backward, counted by torch.utils.flop_counter:
                    matmuls, convolutions and attention (causal attention counted in full);
                    elementwise work is not counted
    train ex/s      forward + backward + grad clipping + AdamW step, as train_toy.train_stage
                    (not the frozen CLIP text forward train_toy also runs per prior step)
    % of peak       GFLOP/example x ex/s over the matmul peak measured in the same run
                    (fp32 on CPU; on CUDA the bf16 peak, the precision training runs in)
    sample s/image  the steps train_toy samples with (Sampling): decoder 50 with batched
                    classifier-free guidance, prior 64 with best-of-2 (AR prior: one call per
                    token), upsamplers at train_toy.Sampling.up_steps (10 and 6)
    peak mem        CUDA: torch.cuda.max_memory_allocated over the training steps. Else: growth
                    of the process's max RSS, a high-water mark: 0 when an earlier model used more,
                    so run one model (--only) for a clean number
Every time is the median of --reps timed windows after warm-up; a training window repeats the
step for at least a second. On CUDA: bf16 autocast, TF32, channels-last U-Nets.
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from clip_frozen import CLIP, ByteTokenizer, FrozenCLIP, clip_loss
from decoder import Decoder
from prior import ARPrior, DiffusionPrior
from toy_data import make_caption, sample_scene
from train_toy import Config
from upsample import Upsampler, resize

try:
    import resource  # Unix only
except ImportError:
    resource = None

MODELS = ("clip", "prior", "ar_prior", "decoder", "up1", "up2")

# On CPU, F.scaled_dot_product_attention runs as one fused op for which the FLOP counter has no
# formula (it counts 0); give it the formulas torch uses for the CUDA attention kernels.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(grad, q, k, v),
}


# ----------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":  # GPUs run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def median_time(fn, reps: int, device, warmup: int = 1, min_window: float = 0.0) -> float:
    """Median seconds per call of fn over `reps` timed windows, after `warmup` untimed calls.
    With min_window > 0, a window repeats fn until it lasts about that long (one more untimed
    call measures how many that takes), so fast steps are not lost in timer noise."""
    for _ in range(warmup):
        fn()
    calls = 1
    if min_window > 0:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        calls = max(1, math.ceil(min_window / max(time.perf_counter() - start, 1e-9)))
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def matmul_peak(device, dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    """Measured matmul throughput in FLOP/s: 2 n^3 per [n, n] @ [n, n], median of reps."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / median_time(lambda: a @ b, reps, device, warmup=2)


def count_flops(loss_fn) -> int:
    """FLOPs of one forward + backward of loss_fn() -> scalar (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


def max_rss_mb() -> float:
    if resource is None:
        return math.nan
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------- the models
def shapes_captions(n: int, seed: int = 0) -> list[str]:
    """n Shapes captions without rendering: their byte lengths set the text cost, as in training."""
    rng = np.random.default_rng(seed)
    return [make_caption(sample_scene(rng), rng)[0] for _ in range(n)]


def unit(n: int, d: int, device) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, device=device), dim=-1)


def smooth_images(n: int, size: int, device) -> torch.Tensor:
    """[n, 3, size, size] in [-1, 1], smooth like Shapes (JPEG in the BSR degradation is slower
    on pixel noise than on flat colour)."""
    return F.interpolate(torch.rand(n, 3, 4, 4, device=device) * 2 - 1, size=size, mode="bilinear")


def build(name: str, cfg: Config, device, n_sample: int, quick: bool) -> dict:
    """{model, batch, loss(): a training loss on one batch, sample(k): k samples or None, steps}."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    s, cc, sample, n_steps = cfg.sampling, cfg.clip, None, None
    steps = lambda n: 2 if quick else n  # --quick: 2 sampling steps, enough to run every line
    batch = getattr(cfg, "opt_prior" if name == "ar_prior" else f"opt_{name}").batch
    B = max(batch, n_sample)
    tokenizer = ByteTokenizer(cc.context_length)
    tokens, mask = (a.to(device) for a in tokenizer(shapes_captions(B)))
    if name == "clip":  # train_clip's step: contrastive loss, the batch's padding columns cut
        model, x = CLIP(cc), smooth_images(B, cc.image_resolution, device)
        text = tokens[:batch, :int(mask[:batch].sum(1).max())]
        loss = lambda: clip_loss(model(x[:batch], text)[0])
    elif name in ("prior", "ar_prior"):  # caption states of an untrained frozen CLIP: same shapes
        clip = FrozenCLIP(CLIP(cc), tokenizer, device=device)
        z_t, states, mask = clip.encode_text(shapes_captions(B))
        z_i = unit(B, cc.embed_dim, device)
        pcfg = cfg.prior if name == "prior" else cfg.ar_prior
        pcfg.clip_dim, pcfg.text_width = clip.embed_dim, clip.text_width  # as train_toy.main
        model = (DiffusionPrior if name == "prior" else ARPrior)(pcfg)
        loss = lambda: model.loss(z_i[:batch], z_t[:batch], states[:batch], mask[:batch])
        if name == "prior":  # best-of-k: the k candidates run as one batch
            n_steps = steps(s.prior_steps)
            sample = lambda k: model.sample(z_t[:k], states[:k], mask[:k], steps=n_steps,
                                            candidates=s.candidates)
        else:
            model.fit_codebook(unit(4096, cc.embed_dim, device), unit(4096, cc.embed_dim, device))
            n_steps = pcfg.pca_dims + 1  # one network call per token
            sample = lambda k: model.sample(z_t[:k], states[:k], mask[:k], candidates=s.candidates)
    elif name == "decoder":
        dc, n_steps = cfg.decoder, steps(s.decoder_steps)  # fields set as train_toy.main does
        dc.clip_dim, dc.image_size = cc.embed_dim, cc.image_resolution
        dc.vocab_size, dc.context_length = tokenizer.vocab_size, cc.context_length
        model, x, z_i = Decoder(dc), smooth_images(B, dc.image_size, device), unit(B, dc.clip_dim, device)
        loss = lambda: model.loss(x[:batch], z_i[:batch], tokens[:batch], mask[:batch])
        n = int(mask.sum(1).max())  # sampling cuts trailing padding, as unclip.generate does
        sample = lambda k: model.sample(z_i[:k], tokens[:k, :n], mask[:k, :n], steps=n_steps,
                                        guidance_scale=s.guidance)  # batched CFG inside
    else:
        uc, n_steps = getattr(cfg, name), steps(s.up_steps[int(name[-1]) - 1])  # up1: 27, up2: 15
        model, hi = Upsampler(uc), smooth_images(B, uc.high_res, device)
        lo = resize(hi, uc.low_res, "area")
        loss = lambda: model.loss(hi[:batch])  # crops of a quarter of the area, as in training
        sample = lambda k: model.sample(lo[:k], steps=n_steps)
    return dict(model=model.to(device), batch=batch, loss=loss, sample=sample, steps=n_steps)


def bench_model(name: str, device, peak: float, reps: int = 5, quick: bool = False,
                n_sample: int = 8, cfg: Config | None = None) -> dict:
    """Measure one model (see the module docstring); peak is the matmul FLOP/s to compare with."""
    device, cuda = torch.device(device), torch.device(device).type == "cuda"
    torch.manual_seed(0)
    rss = max_rss_mb()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    case = build(name, cfg or Config(), device, n_sample, quick)
    model, batch = case["model"].train(), case["batch"]
    if cuda and name in ("decoder", "up1", "up2"):  # the U-Nets: channels-last convolutions
        model.to(memory_format=torch.channels_last)
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    with amp():
        flops = count_flops(case["loss"]) / batch  # also the first warm-up step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():  # train_toy.train_stage's step; no .item(): nothing waits for the device
        with amp():
            loss = case["loss"]()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step_s = median_time(step, reps, device, warmup=1 if quick else 3, min_window=0.0 if quick else 1.0)
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else max_rss_mb() - rss
    result = {"params": sum(p.numel() for p in model.parameters()), "batch": batch,
              "gflop_per_example": flops / 1e9, "train_step_s": step_s,
              "train_examples_per_s": batch / step_s,
              "peak_fraction": flops * batch / step_s / peak, "peak_mem_mb": mem,
              "peak_mem_kind": "cuda max_memory_allocated" if cuda else "process max-RSS growth",
              "sample_s_per_image": None, "sample_batch": None, "sample_steps": case["steps"]}
    if case["sample"] is not None:
        model.eval()
        with torch.no_grad(), amp():
            case["sample"](1)  # warm-up at batch 1
            result["sample_s_per_image"] = median_time(lambda: case["sample"](n_sample), reps, device,
                                                       warmup=0) / n_sample
        result["sample_batch"] = n_sample
    return result


# ----------------------------------------------------------------------------- report
def machine(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def table(report: dict) -> str:
    mem = "peak mem MB" if report["device"] == "cuda" else "max-RSS growth MB"
    lines = [f"| model | params | GFLOP/example (train) | train ex/s | % of matmul peak | sample s/image "
             f"| {mem} |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        sample = "–" if r["sample_s_per_image"] is None else f"{r['sample_s_per_image']:.3g}"
        lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['gflop_per_example']:.3g} | "
                     f"{r['train_examples_per_s']:.3g} | {100 * r['peak_fraction']:.1f} | {sample} | "
                     f"{r['peak_mem_mb']:.0f} |")
    m = report["matmul"]
    return "\n".join(lines) + (
        f"\n\n{report['machine']}, {report['threads']} threads, torch {report['torch']}; matmul peak "
        f"{m['tflops']:.3g} TFLOP/s ({m['dtype']}, {m['n']}x{m['n']}); median of {report['reps']} reps")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto = cuda, else mps, else cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 5, --quick 1)")
    p.add_argument("--only", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, 2 sampling steps, small matmul")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if not names or set(names) - set(MODELS):
        raise SystemExit(f"--only {args.only!r}: choose from {','.join(MODELS)}")
    reps = args.reps or (1 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        mps = torch.backends.mps.is_available()
        args.device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":  # as train_toy: TF32 matmuls, bf16 autocast
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 256 if args.quick else 8192 if device.type == "cuda" else 2048
    peak = matmul_peak(device, dtype, n, reps=max(reps, 3))
    report = {"device": device.type, "machine": machine(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "reps": reps, "quick": args.quick,
              "command": " ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)]),
              "matmul": {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": peak / 1e12},
              "models": {}}
    if device.type == "cuda":  # the fp32 (TF32) figure too, for the record
        report["matmul"]["float32_tflops"] = matmul_peak(device, torch.float32, n, max(reps, 3)) / 1e12
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        report["models"][name] = bench_model(name, device, peak, reps, args.quick)
    print(table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
