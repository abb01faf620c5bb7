"""Measures and pictures that do not depend on the data: CLIP score, Frechet distance, PSNR, a
captioned image grid, and the machine a figure was measured on. train_toy.py, experiments.py,
real_data.py and unclip.py share them; toy_data.py and real_data.py hold the data-specific readers.

Symbols and names
    z_i, z_t   unit CLIP image / caption embeddings [B, D]
    x, y       image batches [B, 3, H, W] in [-1, 1], or feature sets [N, D] for frechet_distance
"""

import os
import platform
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont


def clip_score(z_i: torch.Tensor, z_t: torch.Tensor) -> float:
    """CLIP score: the mean cosine of paired image and caption embeddings [B, D]."""
    if z_i.shape != z_t.shape or z_i.ndim != 2:
        raise ValueError(f"z_i {tuple(z_i.shape)} and z_t {tuple(z_t.shape)} must both be [B, D]")
    return F.cosine_similarity(z_i.double(), z_t.double(), dim=1).mean().item()


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance of Gaussians fitted to x [N, D] and y [M, D] (Heusel et al. 2017, as FID uses):
        |mu_x - mu_y|^2 + tr S_x + tr S_y - 2 tr (S_x^1/2 S_y S_x^1/2)^1/2
    in float64 with symmetric eigendecompositions only: S_x^1/2 S_y S_x^1/2 is symmetric PSD,
    so the trace of its root is the sum of its roots of eigenvalues (no sqrtm, no NaN)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need x [N, D] and y [M, D] with N, M >= 2, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    s_x, s_y = (torch.cov(a.T).reshape(a.shape[1], a.shape[1]) for a in (x, y))
    e, q = torch.linalg.eigh(s_x)
    root_x = (q * e.clamp_min(0).sqrt()) @ q.T  # S_x^1/2
    middle = root_x @ s_y @ root_x
    tr_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return ((x.mean(0) - y.mean(0)).square().sum() + s_x.trace() + s_y.trace() - 2 * tr_root).item()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B] PSNR in dB of images x against y [B, 3, H, W] in [-1, 1], on the [0, 1] scale."""
    return -10 * torch.log10(((x - y) / 2).square().flatten(1).mean(1))


def machine(device) -> str:
    """The OS, CPU model, core and thread counts, torch version and device: what a figure names."""
    cpu, info = platform.processor() or platform.machine(), Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, device {device}")


def save_grid(images, captions, path, ncol: int = 8, scale: int | None = None) -> Path:
    """A PNG of images (tensor [B, 3, H, W] in [-1, 1] or PIL) with their captions under them,
    enlarged by nearest neighbour (default: to about 128 px) so 32x32 stays legible."""
    images = [im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(
        ((im.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0)
        .numpy()) for im in images]
    if len(images) != len(captions) or not images:
        raise ValueError(f"got {len(images)} images and {len(captions)} captions: need as many "
                         "of each, at least one")
    w, h = images[0].size
    scale, pad, line = scale or max(1, 128 // w), 4, 12
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    lines = [textwrap.wrap(c, max(8, int(w * scale / font.getlength("x")))) for c in captions]
    cell_w, cell_h = w * scale + pad, h * scale + 2 * pad + line * max(map(len, lines))
    ncol = min(ncol, len(images))
    sheet = Image.new("RGB", (ncol * cell_w + pad, -(-len(images) // ncol) * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (im, text) in enumerate(zip(images, lines, strict=True)):
        x0, y0 = pad + k % ncol * cell_w, pad + k // ncol * cell_h
        sheet.paste(im.resize((w * scale, h * scale), Image.NEAREST), (x0, y0))
        for j, words in enumerate(text):
            draw.text((x0, y0 + h * scale + pad + j * line), words, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(tmp := path.with_name(path.name + ".tmp"), format="PNG")
    os.replace(tmp, path)  # atomic: a crash never leaves half a grid behind
    return path
