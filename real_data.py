"""Real captioned images (IDX: Fashion-MNIST, MNIST, KMNIST; CIFAR-10; a folder of captioned images) and
a classifier that scores generated images by the class their caption names. Items have the layout of
toy_data.Shapes' (toy_data.shapes_collate stacks them): {"images": {size: x}, "caption": str}, plus in
the labelled sets (IDX, CIFAR-10) "label": k and "named": {"class": name} for
toy_data.attribute_accuracy. train=False gives the held-out split: IDX's and CIFAR-10's own test files,
or a seeded share of a folder's distinct captions (never a training caption).

    x        images [B, 3, H, W] in [-1, 1]; u: the same as uint8, x = u / 127.5 - 1
    k        a label, classes[k] its class name
    phi(x)   the classifier's penultimate features [B, 128], on which FD is computed
"""

import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from metrics import frechet_distance, save_grid
from toy_data import shapes_collate

KINDS = ("cifar10", "fashion_mnist", "folder")  # the --data kinds besides shapes, each KIND:PATH


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1], in numpy (kind to DataLoader workers)."""
    x = np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C")
    return torch.from_numpy(x / np.float32(127.5) - np.float32(1))


def open_dataset(spec: str, train: bool = True, sizes=(32,), seed: int = 0):
    """The dataset a --data spec names (cifar10:PATH, fashion_mnist:PATH or folder:PATH), its training
    split or (train=False) its held-out split, with images at `sizes` (IDX and CIFAR-10: 32 only);
    seed chooses IDX templates and a folder's split."""
    kind, _, path = spec.partition(":")
    if kind not in KINDS or not path:
        raise ValueError(f"data {spec!r}: must be one of {', '.join(k + ':PATH' for k in KINDS)}")
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    if kind != "folder" and sizes != (32,):
        raise ValueError(f"sizes {tuple(sizes)}: {kind} images exist at 32x32 only, so sizes must be (32,); "
                         "to train the upsamplers use a folder of images of 128 px or more")
    if kind == "cifar10":
        return CIFAR10Captions(path, train)
    if kind == "fashion_mnist":
        return IDXCaptions(path, train, seed=seed)
    return ImageFolderCaptions(path, sizes, train=train, seed=seed)


# ----------------------------------------------------------------------------- IDX
IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION = ("t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")  # Fashion-MNIST labels 0-9
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KMNIST = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")  # Kuzushiji-MNIST's hiragana
CLASS_SETS = {"fashion": (FASHION, _a), "digits": (DIGITS, "the digit {}".format),
              "kmnist": (KMNIST, "the hiragana {}".format)}
DETECT = (("kmnist", "kmnist"), ("kuzushiji", "kmnist"), ("fashion", "fashion"), ("mnist", "digits"))
IDX_TEMPLATES = ("a photo of {}", "a black and white picture of {}", "a grayscale photo of {}",
                 "a low resolution photo of {}", "a drawing of {}")


def read_idx(path) -> np.ndarray:
    """An IDX file, gzipped or not, as a uint8 array of the shape its header gives ([N, rows, cols]
    images, [N] labels). Header: two zero bytes, type 0x08 (unsigned byte), the number of dimensions,
    then each dimension as a big-endian int32."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: a damaged gzip file ({e}); download it again") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()}, want "
                         "0000080N: 00 00, type 08, N dimensions)")
    ndim, head = raw[3], 4 + 4 * raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * d:8 + 4 * d], "big") for d in range(ndim))
    if ndim == 0 or len(raw) != head + math.prod(shape):
        raise ValueError(f"{path}: the header gives shape {shape} ({head + math.prod(shape)} bytes with "
                         f"the header), the file holds {len(raw)} bytes: truncated or not IDX")
    return np.frombuffer(raw, np.uint8, offset=head).reshape(shape)


class IDXCaptions(torch.utils.data.Dataset):
    """An IDX image/label pair in `root`: the train files (train=True) or the t10k test files. Each grey
    image is padded (or, if larger, cropped and resized) to 32x32 on black and repeated into RGB; the
    caption puts the class phrase into a template drawn by `seed`, e.g. "a photo of a sneaker". classes:
    a CLASS_SETS key, or None: the first in DETECT whose word the folder's name holds (else its parents',
    nearest first). Item: {"images":
    {32: x}, "caption", "label", "named"}."""

    def __init__(self, root, train: bool = True, classes=None, seed: int = 0):
        root = Path(root)
        found = [[p for p in (root / n, root / f"{n}.gz") if p.is_file()] for n in IDX_FILES[train]]
        if missing := [n for n, f in zip(IDX_FILES[train], found, strict=True) if not f]:
            raise FileNotFoundError(f"{root}: {missing} (or .gz) not found; an IDX folder holds train-* and "
                                    "t10k-* images and labels (`apt-get install dataset-fashion-mnist` puts "
                                    "Fashion-MNIST in /usr/share/datasets/fashion-mnist)")
        images_file, labels_file = found[0][0], found[1][0]
        names = [d.name.lower() for d in (root.resolve(), *root.resolve().parents)]  # the folder's own first
        key = classes or next((k for n in names for w, k in DETECT if w in n), None)
        if key not in CLASS_SETS:
            raise ValueError(f"{root}: classes {classes!r}: pass one of {sorted(CLASS_SETS)} or None to tell "
                             f"them by the folder's name or a parent's, holding one of {list(dict(DETECT))}")
        self.classes, phrase = CLASS_SETS[key]
        self.phrases, self.seed = [phrase(c) for c in self.classes], int(seed)
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{images_file} {images.shape} and {labels_file} {labels.shape}: need "
                             "images [N, rows, cols] and labels [N]")
        if labels.max(initial=0) >= len(self.classes):
            raise ValueError(f"{labels_file}: label {labels.max()} but only {len(self.classes)} classes")
        self.labels, (h, w) = labels.astype(np.int64), images.shape[1:]
        self.templates = np.random.default_rng(self.seed).integers(len(IDX_TEMPLATES), size=len(labels))
        if h <= 32 and w <= 32:  # centred on black: 28 -> 32 adds 2 px a side
            top, left = (32 - h) // 2, (32 - w) // 2
            self.data = np.pad(images, ((0, 0), (top, 32 - h - top), (left, 32 - w - left)))
        else:  # centre-cropped square, area-resized
            self.data = np.stack([np.asarray(ImageOps.fit(Image.fromarray(a), (32, 32), Image.BOX))
                                  for a in images])  # [N, 32, 32] uint8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        k = int(self.labels[i])
        template = IDX_TEMPLATES[self.templates[i]]
        return {"images": {32: _to_tensor(self.data[i][:, :, None].repeat(3, 2))},
                "caption": template.format(self.phrases[k]), "label": k, "named": {"class": self.classes[k]}}


# ----------------------------------------------------------------------------- CIFAR-10
CIFAR_TEMPLATES = ("a photo of {}", "a blurry photo of {}", "a low resolution photo of {}", "a picture of {}")


class _NumpyOnly(pickle.Unpickler):
    """CIFAR batches are pickles: admit only what they hold, so a bad file cannot run code."""

    def find_class(self, module, name):
        if (module, name) not in {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                                  ("numpy.core.multiarray", "_reconstruct"),
                                  ("numpy._core.multiarray", "_reconstruct"),  # protocol 5's arrays:
                                  ("numpy.core.numeric", "_frombuffer"),
                                  ("numpy._core.numeric", "_frombuffer")}:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


class CIFAR10Captions(torch.utils.data.Dataset):
    """CIFAR-10 from its python batches in `root` (the folder cifar-10-batches-py): data_batch_1-5
    (train=True) or test_batch, captioned "a photo of a {class}" with CIFAR_TEMPLATES (template = index
    mod 4). Item: {"images": {32: x}, "caption", "label", "named"}."""

    def __init__(self, root, train: bool = True):
        root = Path(root)
        names = [f"data_batch_{k}" for k in range(1, 6)] if train else ["test_batch"]
        if missing := [n for n in names + ["batches.meta"] if not (root / n).is_file()]:
            raise FileNotFoundError(f"CIFAR-10 files {missing} not found in {root}: pass the folder "
                                    "cifar-10-batches-py of https://www.cs.toronto.edu/~kriz/cifar.html")
        load = lambda name: _NumpyOnly(io.BytesIO((root / name).read_bytes()), encoding="bytes").load()
        self.classes = [c.decode() for c in load("batches.meta")[b"label_names"]]
        data, self.labels = [], []
        for n in names:
            batch = load(n)
            if np.shape(batch[b"data"])[1:] != (3072,) or len(batch[b"data"]) != len(batch[b"labels"]):
                raise ValueError(f"{root / n} is not a CIFAR-10 batch: expected data uint8 "
                                 f"[N, 3072] and N labels, got {np.shape(batch[b'data'])}")
            data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            self.labels += list(batch[b"labels"])
        self.data = torch.from_numpy(np.concatenate(data))  # [N, 3, 32, 32] uint8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        k = self.labels[i]
        caption = CIFAR_TEMPLATES[i % 4].format(_a(self.classes[k]))
        return {"images": {32: self.data[i].float() / 127.5 - 1}, "caption": caption, "label": k,
                "named": {"class": self.classes[k]}}


# ----------------------------------------------------------------------------- image folder
def _held_out(captions: list, fraction: float, seed: int) -> set:
    """A seeded share of the distinct captions (at least one, never all) held out from training."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout {fraction}: must be a fraction in [0, 1)")
    if fraction and len(captions) < 2:
        raise ValueError(f"holding out captions needs at least 2 distinct ones, found {len(captions)}: "
                         "pass holdout=0 to train on all")
    n = min(max(1, round(fraction * len(captions))), len(captions) - 1) if fraction else 0
    return {captions[j] for j in np.random.default_rng(seed).permutation(len(captions))[:n]}


class ImageFolderCaptions(torch.utils.data.Dataset):
    """Every image PIL can read under `root` (recursively) with a same-named .txt caption, turned as its EXIF
    says and made RGB (16-bit grey scaled to 8 bits, transparency onto white), centre-cropped square at the
    largest of `sizes` and area-averaged down to the others, so the views agree as Shapes' do. A `holdout`
    share of the distinct captions, chosen by `seed` whatever the sizes, is the held-out split
    (train=False). Images without a caption, with an empty one, unreadable, of float pixels or smaller than
    the largest size are skipped, listed in `.skipped` and counted in a warning; an empty split is an error.
    Item: {"images": {size: x for size in sizes}, "caption"}."""

    def __init__(self, root, sizes=(32,), train: bool = True, holdout: float = 0.1, seed: int = 0):
        if not (root := Path(root)).is_dir():
            raise FileNotFoundError(f"image folder {root} not found")
        self.sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
        if not self.sizes or any(s < 8 or s & (s - 1) for s in self.sizes):
            raise ValueError(f"sizes {self.sizes} must be powers of two of at least 8")
        found, big = self._scan(root), max(self.sizes)
        # split on what the BPE tokenizer reads: "Photo 2" and "photo 2" are one caption
        held = _held_out(sorted({c.lower() for _, c, _ in found}), holdout, seed) if found else set()
        self.skipped["too small"] = [p for p, _, side in found if side < big]
        self.items = [(p, c) for p, c, side in found if side >= big and (c.lower() in held) != train]
        if counts := {k: len(v) for k, v in self.skipped.items() if v}:
            warnings.warn(f"{root}: skipped {counts} images (see .skipped)", stacklevel=2)
        if not self.items:
            raise ValueError(f"{root}: no usable image in the {'training' if train else 'held-out'} split "
                             f"of {len(found)} captioned images at {big} px (holdout {holdout}, skipped: "
                             f"{counts or 'none'})")

    def _scan(self, root: Path) -> list:
        """[(path, caption, shorter side)] of the readable captioned images; fills self.skipped."""
        suffixes = {e for e, f in Image.registered_extensions().items() if f in Image.OPEN}
        self.skipped = {k: [] for k in ("no caption", "empty caption", "unreadable", "float pixels")}
        found = []
        for p in sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes):
            try:
                with Image.open(p) as im:
                    im.load()  # decodes the whole file: catches garbage and truncation, in any format
                    side, mode = min(im.size), im.mode
            except Exception:  # PIL raises many kinds of error for a bad file
                self.skipped["unreadable"].append(p)
                continue
            if mode == "F":  # 32-bit float pixels have no one range to read as 0-255
                self.skipped["float pixels"].append(p)
                continue
            txt = p.with_suffix(".txt")
            caption = " ".join(txt.read_text("utf-8", "replace").split()) if txt.is_file() else None
            if caption:
                found.append((p, caption, side))
            else:
                self.skipped["no caption" if caption is None else "empty caption"].append(p)
        return found

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, caption = self.items[i]
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # a photo the way round its camera shows it
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: convert() would clip it at 255
                im = Image.fromarray((np.asarray(im, np.float64) / 257).clip(0, 255).round().astype(np.uint8))
            rgba = im.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        big = max(self.sizes)
        top = ImageOps.fit(image, (big, big), Image.LANCZOS)  # centre crop
        return {"images": {s: _to_tensor(top.reduce(big // s)) for s in self.sizes}, "caption": caption}


def save_class_grid(images, captions, named, classes, path, per_class: int = 8) -> Path:
    """A grid of one row per class: up to per_class of the images whose caption names it, blank after."""
    rows = [[k for k, n in enumerate(named) if n["class"] == c][:per_class] for c in classes]
    blank = Image.new("RGB", tuple(images.shape[-2:]), "white")
    cells = [(images[r[j]], captions[r[j]]) if j < len(r) else (blank, "")
             for r in rows for j in range(per_class)]
    return save_grid(*zip(*cells, strict=True), path, ncol=per_class)


# ----------------------------------------------------------------------------- evaluator
def labelled_arrays(dataset) -> tuple:
    """(u uint8 [N, 3, 32, 32], labels int64 [N]) of a labelled dataset (IDX or CIFAR-10)."""
    if "label" not in dataset[0]:
        raise ValueError(f"{type(dataset).__name__} has no labels: the classifier needs a labelled set "
                         "(fashion_mnist or cifar10), not a folder of captions")
    u, labels = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=1000, collate_fn=shapes_collate):
        u.append(((batch["images"][32] + 1) * 127.5).round().to(torch.uint8))
        labels += batch["label"]
    return torch.cat(u), torch.tensor(labels, dtype=torch.int64)


class ClassEvaluator(nn.Module):
    """Reads the class of images as toy_data.Evaluator reads Shapes attributes, with a small CNN trained on
    the data's own training split (fit) that shares nothing with the generator: read(x) -> [{"class":
    name}] for toy_data.attribute_accuracy, frechet(x, y) -> the FD between phi of two image sets.
    x: float [B, 3, H, W] in [-1, 1] or uint8; a size other than 32 is area-averaged to 32 first.
    The CNN: three stride-2 3x3 convolutions (32 -> 16 -> 8 -> 4 px), then phi, 128 hidden units."""

    def __init__(self, classes, width: int = 16, info=None):
        super().__init__()
        conv = lambda a, b: [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
        self.classes, self.width, self.info = list(classes), width, dict(info or {})
        self.phi = nn.Sequential(*conv(3, width), *conv(width, 2 * width), *conv(2 * width, 4 * width),
                                 nn.Flatten(), nn.Linear(4 * width * 16, 128), nn.ReLU())
        self.head = nn.Linear(128, len(self.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, 32, 32] in [-1, 1] -> logits [B, K]
        return self.head(self.phi(x))

    @classmethod
    @torch.enable_grad()  # also when called under torch.no_grad, as an evaluation is
    def fit(cls, u, labels, classes, steps: int = 1200, batch: int = 128, lr: float = 2e-3,
            width: int = 16, seed: int = 0) -> "ClassEvaluator":
        """A ClassEvaluator trained by Adam with cosine decay on u uint8 [N, 3, 32, 32] and labels [N];
        the same inputs and seed give the same weights. info: steps, seconds, the last loss, seed."""
        if (u.dtype != torch.uint8 or u.shape[1:] != (3, 32, 32) or labels.shape != (len(u),) or not len(u)
                or not 0 <= labels.min() <= labels.max() < len(classes) or steps < 1):
            raise ValueError(f"need u uint8 [N, 3, 32, 32] (N >= 1), labels [N] in 0..{len(classes) - 1} and "
                             f"steps >= 1, got {u.dtype} {tuple(u.shape)}, {tuple(labels.shape)} and {steps}")
        with torch.random.fork_rng(devices=[]):  # seeded, the caller's RNG left as it was
            torch.manual_seed(seed)
            net = cls(classes, width)
        opt, g = torch.optim.Adam(net.parameters(), lr), torch.Generator().manual_seed(seed)
        clock = time.perf_counter()
        for step in range(steps):
            opt.param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            i = torch.randint(0, len(u), (batch,), generator=g)
            loss = F.cross_entropy(net(u[i].float() / 127.5 - 1), labels[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.info = {"steps": steps, "seconds": time.perf_counter() - clock, "loss": loss.item(), "seed": seed}
        return net

    @torch.no_grad()
    def _run(self, x: torch.Tensor, part) -> torch.Tensor:
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(x.shape)}")
        x = x if x.shape[-2:] == (32, 32) else F.interpolate(x, size=(32, 32), mode="area")
        return torch.cat([part(x[k:k + 500].cpu()) for k in range(0, len(x), 500)])

    def read(self, x) -> list:
        """[{"class": name}] per image: the most probable class."""
        return [{"class": self.classes[k]} for k in self._run(x, self).argmax(1).tolist()]

    def accuracy(self, x, labels) -> float:
        """The fraction of images whose most probable class is their label."""
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        return (self._run(x, self).argmax(1) == torch.as_tensor(labels)).double().mean().item()

    def frechet(self, x, y) -> float:
        """FD between Gaussians fitted to phi(x) and phi(y) (metrics.frechet_distance)."""
        return frechet_distance(self._run(x, self.phi), self._run(y, self.phi))

    def save(self, path) -> Path:
        """Written aside then renamed: a crash never leaves half a file."""
        (path := Path(path)).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"classes": self.classes, "width": self.width, "state_dict": self.state_dict(),
                    "info": self.info}, tmp := path.with_name(path.name + ".tmp"))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "ClassEvaluator":
        """The ClassEvaluator that save wrote to `path` (read with weights_only=True: no code runs)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net = cls(state["classes"], state["width"], state["info"])
            net.load_state_dict(state["state_dict"])
        except Exception as e:  # unpickling, a missing key or a shape mismatch: not a classifier
            raise ValueError(f"{path} is not a saved classifier ({type(e).__name__}: {e}); delete it to "
                             "train a new one") from None
        return net

    @classmethod
    def load_or_train(cls, path, train_set, test_set=None, log=print, **fit_kw) -> "ClassEvaluator":
        """The classifier saved at `path` if it was trained on train_set's images, labels and classes,
        else one trained now (fit_kw go to fit; info["test_accuracy"] on test_set if given) and saved
        there. A saved classifier of other data is an error, never overwritten."""
        u, labels = labelled_arrays(train_set)
        digest = hashlib.sha1(u.numpy()).hexdigest() + hashlib.sha1(labels.numpy()).hexdigest()
        if Path(path).exists():
            ev = cls.load(path)
            if ev.info.get("data_sha1") != digest or ev.classes != list(train_set.classes):
                raise ValueError(f"{path} holds a classifier of other data (classes {ev.classes}): delete "
                                 "it or choose another path")
            return ev
        log(f"classifier: training on {len(u)} images of {path}")
        ev = cls.fit(u, labels, train_set.classes, **fit_kw)
        ev.info["data_sha1"] = digest
        if test_set is not None:
            ev.info["test_accuracy"] = ev.accuracy(*labelled_arrays(test_set))
        log(f"classifier: {ev.info['steps']} steps in {ev.info['seconds']:.0f}s, held-out accuracy "
            f"{ev.info.get('test_accuracy', float('nan')):.4f}")
        ev.save(path)
        return ev


def main():
    """python real_data.py KIND:PATH: loading time, the classifier's training time and held-out
    accuracy, and on held-out subsets the ceiling (accuracy) and floor (FD) a generator is held to."""
    if len(sys.argv) not in (2, 3):
        raise SystemExit(f"usage: python real_data.py KIND:PATH [CLASSIFIER.pt]\n{main.__doc__}")
    spec, path, clock = sys.argv[1], (sys.argv[2:] or ["runs/classifier.pt"])[0], time.perf_counter()
    train, test = open_dataset(spec, train=True), open_dataset(spec, train=False)
    print(f"{spec}: {len(train)} training and {len(test)} held-out images read in "
          f"{time.perf_counter() - clock:.1f}s; e.g. {train[0]['caption']!r}, {test[1]['caption']!r}")
    ev = ClassEvaluator.load_or_train(path, train, test)
    u, labels = labelled_arrays(test)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    for n in (100, 1000):  # train_toy's --eval_size, and ten times it
        first, second = idx[:n], idx[n:2 * n]
        print(f"{n} held-out images: accuracy {ev.accuracy(u[first], labels[first]):.4f}; FD to {n} other "
              f"held-out images {ev.frechet(u[first], u[second]):.2f}")


if __name__ == "__main__":
    main()
