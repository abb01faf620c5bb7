"""Measures and pictures that do not depend on the data: CLIP score, Frechet distance, PSNR, a
captioned image grid, line charts, the machine a figure was measured on, its peak memory and glibc's
reuse of freed memory, atomic fsync'd file writes (and files set aside, put back), the run report and a
sampling progress line with its ETA.
train_toy.py, experiments.py, real_data.py, unclip.py and bench.py share them; toy_data.py and
real_data.py hold the data-specific readers.

Symbols and names
    z_i, z_t   unit CLIP image / caption embeddings [B, D]
    x, y       image batches [B, 3, H, W] in [-1, 1], or feature sets [N, D] for frechet_distance
"""

import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import textwrap
import time
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
    fd = (x.mean(0) - y.mean(0)).square().sum() + s_x.trace() + s_y.trace() - 2 * tr_root
    return max(0.0, fd.item())  # >= 0 in exact arithmetic; rounding can leave -1e-6 for x = y


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[B] PSNR in dB of images x against y [B, 3, H, W] in [-1, 1], on the [0, 1] scale."""
    return -10 * torch.log10(((x - y) / 2).square().flatten(1).mean(1))


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, a container's cpuset), not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine(device) -> str:
    """The OS, CPU model, core and thread counts, torch version and device: what a figure names."""
    cpu, info = platform.processor() or platform.machine(), Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return (f"{platform.system()} {platform.machine()}, {usable_cpus()} CPUs ({cpu}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, device {device}"
            + (f" ({torch.cuda.get_device_name(device)})" if torch.device(device).type == "cuda" else ""))


def max_rss_mb() -> float:
    """The peak resident memory of this process so far, in MiB (NaN where unknown)."""
    try:
        import resource  # Unix only
    except ImportError:
        return math.nan
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


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
    font = _font(10)
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
    return _save_png(sheet, path)



def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list:
    """About n round values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= n)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list:
    """log10 of the powers of ten inside [10^lo, 10^hi]; of 1, 2 and 5 times them over under two decades."""
    steps = (1,) if hi - lo > 2 else (1, 2, 5)
    ticks = [d + math.log10(m) for d in range(math.floor(lo), math.ceil(hi) + 1) for m in steps]
    return [t for t in ticks if lo <= t <= hi]


def _label(v: float) -> str:
    return str(round(v)) if abs(v - round(v)) < 1e-9 and abs(v) < 1e7 else f"{v:.3g}"


def _chart(draw, p: dict, box: tuple, font) -> None:
    """One line chart of panel p (see save_charts) inside box = (left, top, right, bottom) in px."""
    fx, fy = (math.log10 if p.get(f"log_{a}") else float for a in "xy")
    pts = [(fx(x), fy(y)) for s in p["series"].values() for x, y in s]
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*pts, strict=True))
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or abs(y0) or 1.0
    x0, x1, y0, y1 = x0 - 0.05 * dx, x1 + 0.05 * dx, y0 - 0.05 * dy, y1 + 0.05 * dy
    left, top, right, bottom = box

    def px(x, y):  # data -> pixels; x already on the drawn (possibly log) scale
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.rectangle(box, outline="black")
    xs = sorted({fx(x) for s in p["series"].values() for x, _ in s})
    for tx in xs if len(xs) <= 8 else _ticks(x0, x1):  # the measured x values when they are few
        (u, _) = px(tx, y0)
        draw.line((u, bottom, u, bottom + 3), fill="black")
        draw.text((u, bottom + 4), _label(10 ** tx if p.get("log_x") else tx), fill="black", font=font,
                  anchor="ma")
    for ty in _ticks(y0, y1) if not p.get("log_y") else _log_ticks(y0, y1):
        (_, v) = px(x0, ty)
        draw.line((left - 3, v, left, v), fill="black")
        draw.text((left - 5, v), _label(10 ** ty if p.get("log_y") else ty), fill="black", font=font,
                  anchor="rm")
    draw.text(((left + right) / 2, top - 34), p["title"], fill="black", font=font, anchor="ma")
    draw.text((left, top - 16), p["y"], fill="black", font=font)
    draw.text(((left + right) / 2, bottom + 18), p["x"], fill="black", font=font, anchor="ma")
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for j, (name, s) in enumerate(p["series"].items()):
        colour, xy = colours[j % len(colours)], [px(fx(x), fy(y)) for x, y in s]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for cx, cy in xy if len(xy) <= 40 else ():  # dots only where there are few points
            draw.ellipse((cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5), fill=colour)
        draw.text((right - 4, top + 4 + 13 * j), name, fill=colour, font=font, anchor="ra")


def save_charts(panels: list, path, size=(380, 300)) -> Path:
    """A PNG of line charts side by side, drawn with PIL alone. Each panel is a dict: "title", "x" and
    "y" (axis labels), "series" {name: [(x, y), ...]}, optional "log_x" / "log_y" (log10 axes). The axes
    span the data with 5% margins; ticks at round values, or at the measured x when they are few."""
    if not panels or any(not p.get("series") or not all(p["series"].values()) for p in panels):
        raise ValueError("every panel needs at least one series with at least one point")
    for p in panels:
        for i, a in enumerate("xy"):
            if p.get(f"log_{a}") and any(pt[i] <= 0 for s in p["series"].values() for pt in s):
                raise ValueError(f"panel {p.get('title')!r}: a log {a} axis needs {a} > 0")
    (w, h), font = size, _font(11)
    sheet = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, p in enumerate(panels):
        _chart(draw, p, (k * w + 56, 40, k * w + w - 12, h - 36), font)
    return _save_png(sheet, path)


def _save_png(image: Image.Image, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path.with_name(path.name + ".tmp"), format="PNG")
    commit(path)  # atomic: a crash never leaves half a picture behind
    return path


def guarded(path: Path, save) -> None:
    """save() writes path.tmp and renames it to path: never a half-written file. If the write fails (a
    full disk) the partial file goes, path keeps what it held, and the error says what to do."""
    try:
        save()
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        Path(f"{path}.tmp").unlink(missing_ok=True)
        free = shutil.disk_usage(Path(path).parent).free / 2**20
        why = (str(e) or type(e).__name__).splitlines()[0][:160]  # an OSError() has no message
        raise OSError(f"cannot write {path} ({why}; {free:.0f} MiB free there). "
                      "The files written before are kept: make room, then run again with --resume") from None


def commit(path) -> None:
    """path.tmp, written, becomes path: its bytes reach the disk first (fsync), then the rename, then the
    folder's entry (POSIX), so neither a crash nor a power cut leaves a half-written file at path."""
    with open(f"{path}.tmp", "r+b") as f:  # Windows' fsync needs a handle open for writing
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)
    try:  # the folder's entry: POSIX only, and best effort (some network file systems refuse it)
        folder = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except (AttributeError, OSError):
        pass


def set_aside(paths) -> list:
    """Each existing path renamed to path.old, nothing deleted -> the paths set aside."""
    moved = [Path(p) for p in paths if Path(p).exists()]
    for p in moved:
        os.replace(p, f"{p}.old")
    return moved


def put_back(paths, but=()) -> None:
    """Each path.old back to path where nothing was written at path since, but the stems in `but`; one that
    cannot move stays path.old (nothing is lost, and no error hides the one that stopped the caller)."""
    for p in map(Path, paths):
        if not p.exists() and p.stem not in but:
            with contextlib.suppress(OSError):
                os.replace(f"{p}.old", p)


def save_atomic(obj, path: Path) -> None:
    guarded(path, lambda: (torch.save(obj, f"{path}.tmp"), commit(path)))


def save_atomic_text(path: Path, text: str) -> None:  # its folder made if missing
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    guarded(path, lambda: (Path(f"{path}.tmp").write_text(text), commit(path)))


def reuse_freed_memory() -> bool:
    """Let glibc's allocator keep the memory a CPU step frees, for the next step to reuse. By default it maps
    each block over its mmap threshold afresh and returns the heap's free top past its trim threshold, so a
    step whose activations free more than 64 MiB at once faults in new zeroed pages every step: ~45 000
    faults, 2-10% of a 64-wide decoder step on 2 cores (EXPERIMENTS.md, "Freed memory"). Raising both (mmap's
    to its 32 MiB ceiling; at most 1 GiB kept free) stops that; peak memory barely moves: what is kept was
    in use at the peak. True if set; False off Linux or off glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt if sys.platform == "linux" else None  # the process's C library
    except (OSError, AttributeError):
        return False
    trim, mmap = -1, -3  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD; setting one fixes both
    return mallopt is not None and bool(mallopt(mmap, 32 << 20) and mallopt(trim, 1 << 30))


def markdown_table(rows: list, order=(), formats=None) -> str:
    """rows (dicts) as a markdown table: the columns in `order`, then the others as they come; floats by
    formats[column] (default {:.3f}); "–" where a row has none."""
    formats = formats or {}
    columns = [c for c in dict.fromkeys((*order, *(k for r in rows for k in r))) if any(c in r for r in rows)]
    cell = lambda v, c: ("–" if v is None else formats.get(c, "{:.3f}").format(v)
                         if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows])


def weights_id(module: torch.nn.Module) -> str:
    """A hash of a module's weights, bit for bit: which model a checkpoint was trained on."""
    digest = hashlib.sha1()
    for v in module.state_dict().values():
        digest.update(v.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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
    """report (its "config" left out) as a markdown table in out/report.md, all of it in out/report.json."""
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
