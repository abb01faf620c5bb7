"""The toy world: Shapes scenes and captions, an exact evaluator (real data: real_data.py; generic
measures such as the CLIP score and FD: metrics.py).

Shapes is a procedurally rendered, captioned dataset with a known ground truth, so an image
generated from a caption can be checked exactly: one object (or a left and a right one) on a
plain background; no download, infinite, seeded.

Symbols and names
    attrs      the full truth of a scene, e.g. {"colour": "red", "shape": "circle", ...}
    y, named   a caption and the attributes it names (`parse_caption(y) == named`)
    x          images [B, 3, H, W] in [-1, 1]; the 32/64/128 views of one scene agree
    b, p, c    background and object colour (RGB in [0, 1]), coverage: a pixel is x = b + c (p - b)
    C_n        complex moment sum c (z - z_bar)^n, z = column + i row; blur leaves it unchanged
"""

import math
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from metrics import save_grid

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")  # 3x3 grid, row-major
BACKGROUNDS = ("black", "white", "gray")
ATTRIBUTES = ("colour", "shape", "size", "position", "background")
PAIR_ATTRIBUTES = ("left_colour", "left_shape", "left_size", "right_colour", "right_shape",
                   "right_size", "background")  # two-object scenes

# saturated objects on colourless backgrounds: wherever there is colour, there is the object
RGB = {"red": (230, 30, 30), "green": (30, 170, 50), "blue": (30, 80, 230),
       "yellow": (240, 220, 30), "purple": (150, 50, 210), "orange": (250, 130, 20),
       "black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
RADIUS = {"small": 0.15, "large": 0.21}  # circumradius / width: 4.8 and 6.7 px at 32x32
GRID = (0.25, 0.5, 0.75)  # position centres; 0.21 * 1.05 + 0.02 < 0.25: never clipped
JITTER_XY, JITTER_R, JITTER_DEG = 0.02, 0.05, 15.0  # small: a square never turns into a diamond
CROSS_ARM = 0.25  # arm width / span; thin arms keep a blurred cross far from a square
RENDER_SIZE = 256  # every view is an area average of one 256x256 drawing
P_NAMED = {"size": 0.6, "position": 0.6, "background": 0.5}  # P(a caption names it)
# held-out scenes are Shapes(seed=run seed + EVAL_SEED): train_toy.evaluate and experiments.py score
# the same scenes, which no training stage renders (training uses the run seed itself)
EVAL_SEED = 7919


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str
    position: str
    x: float  # centre as a fraction of the width: GRID centre + jitter
    y: float
    radius: float  # circumradius as a fraction of the width: RADIUS[size] * jitter
    angle: float  # degrees


@dataclass(frozen=True)
class Scene:
    objects: tuple  # (Obj,) or (left Obj, right Obj)
    background: str

    @property
    def attrs(self) -> dict:  # the full truth: ATTRIBUTES, or PAIR_ATTRIBUTES for two objects
        if len(self.objects) == 1:
            out = {k: getattr(self.objects[0], k) for k in ("colour", "shape", "size", "position")}
        else:
            out = {f"{side}_{k}": getattr(o, k) for k in ("colour", "shape", "size")
                   for side, o in zip(("left", "right"), self.objects, strict=True)}
        return out | {"background": self.background}


def allowed_pairs(holdout=()) -> list:
    """All (colour, shape) pairs except `holdout`, which must name real pairs."""
    holdout, pairs = {tuple(p) for p in holdout}, [(c, s) for c in COLOURS for s in SHAPES]
    if unknown := holdout - set(pairs):
        raise ValueError(f"holdout {sorted(unknown)} are not (colour, shape) pairs; colours "
                         f"are {COLOURS}, shapes {SHAPES}")
    if not (pairs := [p for p in pairs if p not in holdout]):
        raise ValueError("holdout removes every (colour, shape) pair; nothing is left to draw")
    return pairs


def _object(rng, colour, shape, position) -> Obj:
    size, (row, col) = SIZES[rng.integers(2)], divmod(POSITIONS.index(position), 3)
    x, y = (GRID[k] + rng.uniform(-JITTER_XY, JITTER_XY) for k in (col, row))
    radius = RADIUS[size] * rng.uniform(1 - JITTER_R, 1 + JITTER_R)
    return Obj(colour, shape, size, position, x, y, radius, rng.uniform(-JITTER_DEG, JITTER_DEG))


def sample_scene(rng: np.random.Generator, holdout=(), two_objects=False) -> Scene:
    """A random scene; (colour, shape) pairs in `holdout` are never drawn (to draw only some pairs,
    hold out all the others). two_objects: a left and a right object with different colours and
    shapes, for the attribute-binding experiment ([unCLIP] Sec. 7, limitations)."""
    pairs = allowed_pairs(holdout)
    background, first = BACKGROUNDS[rng.integers(3)], pairs[rng.integers(len(pairs))]
    if not two_objects:
        return Scene((_object(rng, *first, POSITIONS[rng.integers(9)]),), background)
    if not (others := [p for p in pairs if p[0] != first[0] and p[1] != first[1]]):
        raise ValueError("holdout leaves no second object of another colour and shape")
    second = others[rng.integers(len(others))]
    return Scene((_object(rng, *first, "left"), _object(rng, *second, "right")), background)


def _outline(shape: str, angle: float) -> list:
    """Polygon of a square, triangle or cross with circumradius 1 at 0 (y points down)."""
    if shape == "cross":  # 4 turns of one quarter: tip t, half arm h, t^2 + h^2 = 1
        t = 1 / math.hypot(1, CROSS_ARM)
        h = CROSS_ARM * t
        corners, turns = [(h, -t), (h, -h), (t, -h)], (0, 90, 180, 270)
    elif shape == "triangle":  # pointing up
        corners, turns = [(0.0, -1.0)], (0, 120, 240)
    else:  # square, sides level
        corners, turns = [(0.0, -1.0)], (45, 135, 225, 315)
    return [(math.cos(a) * u - math.sin(a) * v, math.sin(a) * u + math.cos(a) * v)
            for a in (math.radians(turn + angle) for turn in turns) for u, v in corners]


def _check_sizes(sizes):
    if not sizes or any(s not in (8, 16, 32, 64, 128, 256) for s in sizes):
        raise ValueError(f"sizes {sizes} must be powers of two from 8 to {RENDER_SIZE}")


def render(scene: Scene, sizes=(32,)) -> dict:
    """{size: [3, size, size] in [-1, 1]}: one 256x256 drawing, halved by 2x2 averaging down to
    each size (antialiasing), so the 32, 64 and 128 views of a scene agree."""
    _check_sizes(sizes)
    image = Image.new("RGB", (RENDER_SIZE, RENDER_SIZE), RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        cx, cy, r = o.x * RENDER_SIZE, o.y * RENDER_SIZE, o.radius * RENDER_SIZE
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RGB[o.colour])
        else:
            draw.polygon([(cx + r * u, cy + r * v) for u, v in _outline(o.shape, o.angle)],
                         fill=RGB[o.colour])
    views = {RENDER_SIZE: image}  # one fixed chain of halvings, whatever sizes were asked for
    while min(views) > min(sizes):
        views[min(views) // 2] = views[min(views)].reduce(2)
    return {s: _to_tensor(views[s]) for s in sizes}


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [3, H, W] in [-1, 1], in numpy: small torch ops in a DataLoader can stall on
    a busy CPU when torch's threads compete for the cores; numpy's do not."""
    x = np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C")
    return torch.from_numpy(x / np.float32(127.5) - np.float32(1))


# ----------------------------------------------------------------------------- captions
PREFIXES = ("", "a photo of ", "a picture of ", "an image of ", "a drawing of ")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {p: (f"in the {p}", f"in the {p} corner") for p in POSITIONS if " " in p} | {
    "top": ("at the top",), "bottom": ("at the bottom",), "left": ("on the left",),
    "right": ("on the right",), "center": ("in the center",)}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background")


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def make_caption(scene: Scene, rng: np.random.Generator) -> tuple:
    """(caption, named). Colour and shape are always named; size, position and background
    only some of the time (P_NAMED), so one caption fits many images: the reason [unCLIP]
    needs a prior (Sec. 2.2)."""
    pick = lambda options: options[rng.integers(len(options))]  # noqa: E731 (short, local)
    if len(scene.objects) == 2:
        a, b = scene.objects
        named = {"left_colour": a.colour, "left_shape": a.shape,
                 "right_colour": b.colour, "right_shape": b.shape}
        left, right = _a(f"{a.colour} {a.shape}"), _a(f"{b.colour} {b.shape}")
        text = pick((f"{left} to the left of {right}", f"{right} to the right of {left}",
                     f"{left} on the left and {right} on the right"))
    else:
        o = scene.objects[0]
        named, text, where = {"colour": o.colour, "shape": o.shape}, f"{o.colour} {o.shape}", ""
        if rng.random() < P_NAMED["size"]:
            named["size"], text = o.size, pick(SIZE_WORDS[o.size]) + " " + text
        if rng.random() < P_NAMED["position"]:
            named["position"], where = o.position, " " + pick(POSITION_PHRASES[o.position])
        text = _a(text) + where
    if rng.random() < P_NAMED["background"]:
        named["background"] = scene.background
        text += " " + pick(BACKGROUND_PHRASES).format(scene.background)
    return pick(PREFIXES) + text, named


def _alt(words) -> str:  # longest first, so "in the top left corner" beats "in the top left"
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_CANONICAL = {w: s for s, ws in (SIZE_WORDS | POSITION_PHRASES).items() for w in ws}
_PREFIX = rf"(?:{_alt(p.strip() for p in PREFIXES if p)} )?"
_BG = rf"(?: (?:on|against) a (?P<background>{_alt(BACKGROUNDS)}) background)?"
_ONE = re.compile(rf"{_PREFIX}an? (?:(?P<size>{_alt(sum(SIZE_WORDS.values(), ()))}) )?"
                  rf"(?P<colour>{_alt(COLOURS)}) (?P<shape>{_alt(SHAPES)})"
                  rf"(?: (?P<position>{_alt(sum(POSITION_PHRASES.values(), ()))}))?{_BG}")
# two objects: "a to the left/right of b" or "c on the left and d on the right"
_OBJ = "an? (?P<{0}_colour>" + _alt(COLOURS) + ") (?P<{0}_shape>" + _alt(SHAPES) + ")"
_TWO = re.compile(_PREFIX + "(?:{} to the (?P<rel>left|right) of {}|{} on the left and {} on "
                  "the right)".format(*(_OBJ.format(k) for k in ("a", "b", "c", "d"))) + _BG)


def parse_caption(caption: str) -> dict:
    """The attributes a Shapes caption names, in canonical words: the inverse of make_caption."""
    text = " ".join(caption.lower().split())
    if m := _ONE.fullmatch(text):
        return {k: _CANONICAL.get(v, v) for k, v in m.groupdict().items() if v is not None}
    if m := _TWO.fullmatch(text):
        g = m.groupdict()
        left, right = ("b", "a") if g["rel"] == "right" else ("a", "b") if g["rel"] else "cd"
        named = {f"{side}_{k}": g[f"{key}_{k}"] for side, key in (("left", left),
                 ("right", right)) for k in ("colour", "shape")}
        return named | ({"background": g["background"]} if g["background"] else {})
    raise ValueError(f"cannot parse caption {caption!r}: not in the Shapes grammar, e.g. "
                     "'a large red circle in the top left on a gray background'")


# ----------------------------------------------------------------------------- datasets
class Shapes(torch.utils.data.Dataset):
    """Item i is a pure function of (seed, i): scene, caption and every requested view."""

    def __init__(self, length: int, sizes=(32,), seed: int = 0, holdout=(), two_objects=False):
        """two_objects: True (every scene), False, or the fraction of scenes with two objects."""
        allowed_pairs(holdout)  # fail here, not later inside a DataLoader worker
        _check_sizes(sizes)
        if not 0 <= float(two_objects) <= 1:
            raise ValueError(f"two_objects must be a fraction in [0, 1], got {two_objects}")
        if int(seed) < 0:  # numpy's seed sequences take non-negative ints
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.length, self.sizes, self.seed = int(length), tuple(sizes), int(seed)
        self.holdout, self.two_objects = tuple(tuple(p) for p in holdout), two_objects

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} is out of range for Shapes of length {self.length}")
        rng, p = np.random.default_rng([self.seed, i]), float(self.two_objects)
        # a mix draws from its own stream, so a scene's one-object content never depends on p
        two = p == 1 or (p > 0 and np.random.default_rng([self.seed, i, 2]).random() < p)
        scene = sample_scene(rng, self.holdout, two)
        caption, named = make_caption(scene, rng)
        return {"images": render(scene, self.sizes), "caption": caption, "named": named, "attrs": scene.attrs}


def shapes_collate(batch: list) -> dict:
    """"images" stacked per size into [B, 3, s, s]; every other key becomes a list."""
    return {k: {s: torch.stack([item[k][s] for item in batch]) for s in batch[0][k]}
            if k == "images" else [item[k] for item in batch] for k in batch[0]}


# ----------------------------------------------------------------------------- evaluator
class Evaluator:
    """Reads Shapes images back into attributes. Rule-based: it shares nothing with CLIP.

    Every image is read at 32x32: a larger one is area-averaged down, which reproduces the 32x32
    render exactly. A pixel is modelled as x = b + c (p - b): b is the median colour of the border;
    p is the palette colour whose mixing line fits the pixels best; position is the centroid of c;
    shape comes from the normalized moments |C_3| (3-fold symmetry: triangle) and |C_4| (4-fold:
    square, more for a thin-armed cross; 0: circle), which an isotropic blur leaves unchanged; size
    is the area sum(c), given the shape. The thresholds are measured on clean renders in __init__.
    """

    def __init__(self):
        clean = {(s, z): Scene((Obj("red", s, z, "center", 0.5, 0.5, RADIUS[z], 0.0),), "gray")
                 for s in SHAPES for z in SIZES}  # centred, unrotated
        m = {k: self._measure(render(scene)[32][None] / 2 + 0.5) for k, scene in clean.items()}
        n4_square, n4_cross = m["square", "large"]["n4"].item(), m["cross", "large"]["n4"].item()
        # cut halfway between the clean values (geometrically between square and cross)
        self.n3_triangle, self.n4_cross = m["triangle", "large"]["n3"].item(), n4_cross
        self.n3_cut = self.n3_triangle / 2
        self.n4_cuts = (n4_square / 2, math.sqrt(n4_square * n4_cross))
        self.area_cut = {s: math.sqrt(m[s, "small"]["area"] * m[s, "large"]["area"]) for s in SHAPES}

    def read(self, images) -> list:
        """images [B, 3, H, W] in [-1, 1] or a list of PIL, H, W >= 32 -> B ATTRIBUTES dicts."""
        return self._classify(self._measure(self._as_batch(images)))

    def read_pair(self, images) -> list:
        """Two-object scenes -> B dicts of PAIR_ATTRIBUTES; each image half holds one object."""
        x, left = self._as_batch(images), torch.arange(32) < 16  # columns of the left half
        reads = [self._classify(self._measure(x, half)) for half in (left, ~left)]
        return [{f"{side}_{k}": r[k] for side, r in (("left", a), ("right", b))
                 for k in ("colour", "shape", "size")} | {"background": a["background"]}
                for a, b in zip(*reads, strict=True)]

    @staticmethod
    def _as_batch(images) -> torch.Tensor:  # -> [B, 3, 32, 32] in [0, 1]
        if isinstance(images, (list, tuple)):  # PIL images, maybe of different sizes
            return torch.cat([Evaluator._as_batch(_to_tensor(im.convert("RGB"))[None]) for im in images])
        if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[2:]) < 32:
            raise ValueError(f"expected images [B, 3, H, W] with H, W >= 32, got {tuple(images.shape)}")
        if images.min() < -1.5 or images.max() > 1.5:
            raise ValueError(f"images must be in [-1, 1], got values up to {images.max():.1f} "
                             f"and down to {images.min():.1f} (map uint8 with x / 127.5 - 1)")
        return F.adaptive_avg_pool2d((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, 32)

    @staticmethod
    def _measure(x, region=True) -> dict:
        """Background and colour indices, area (pixels), centroid (fractions) and |C_3|, |C_4| of the
        object inside `region` (bool, broadcast to [32, 32]) of each image of x [B, 3, 32, 32] in [0, 1]."""
        B, _, H, W = x.shape
        ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=2)
        b = ring.median(dim=2).values  # [B, 3]: median colour of the outermost ring of pixels
        background = torch.cdist(b, torch.tensor([RGB[c] for c in BACKGROUNDS]) / 255.0).argmin(1)
        # a 3x3 binomial blur first: it averages pixel noise away, and C_n ignores blur
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None] / 16).expand(3, 1, 3, 3)
        b = b[:, :, None, None]
        d = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3) - b  # x - b
        v = torch.tensor([RGB[c] for c in COLOURS]) / 255.0 - b[:, None, :, 0, 0]  # [B, K, 3]
        # least-squares coverage for each candidate colour: c = <x - b, p - b> / |p - b|^2
        c = torch.einsum("bchw,bkc->bkhw", d, v) / (v * v).sum(-1)[..., None, None]
        fit = c.clamp(0, 1)[:, :, None] * v[..., None, None]  # [B, K, 3, H, W]
        colour = ((d[:, None] - fit) ** 2 * region).sum((2, 3, 4)).argmin(1)  # best mixing line
        c = c[torch.arange(B), colour][:, None] * region  # [B, 1, H, W]
        # the object: pixels with c > 0.3 connected to the strongest one (drops stray noise)
        mask, grown = c > 0.3, torch.zeros_like(c, dtype=torch.bool)
        grown.view(B, -1)[torch.arange(B), c.view(B, -1).argmax(1)] = True
        while not torch.equal(grown, nxt := F.max_pool2d(grown.float(), 3, 1, 1).bool() & mask):
            grown = nxt
        c = c.clamp(0, 1) * F.max_pool2d(grown.float(), 3, 1, 1)  # + a 1-pixel rim: blur tails
        area = c.sum((1, 2, 3)).clamp_min(1e-6)  # [B]
        rows, cols = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        cy, cx = (c * rows).sum((1, 2, 3)) / area, (c * cols).sum((1, 2, 3)) / area
        z = torch.complex(cols - cx[:, None, None], rows - cy[:, None, None])[:, None]
        z2 = z * z
        n3 = (c * z2 * z).sum((1, 2, 3)).abs() / area**2.5  # |C_3| / area^(5/2): scale-free
        n4 = (c * z2 * z2).sum((1, 2, 3)).abs() / area**3
        return {"background": background, "colour": colour, "area": area, "x": cx / W, "y": cy / H,
                "n3": n3, "n4": n4}

    def _classify(self, m: dict) -> list:
        """Measurements -> B ATTRIBUTES dicts."""
        out = []
        for bg, k, area, x, y, n3, n4 in zip(*(m[key].tolist() for key in m), strict=True):
            # |C_3| past its cut AND stronger than |C_4|, each against its clean shape's: a cross
            # with one arm a third longer passes the cut, but its |C_4| keeps it a cross
            triangle = n3 > self.n3_cut and n3 / self.n3_triangle >= n4 / self.n4_cross
            shape = ("triangle" if triangle else "circle" if n4 < self.n4_cuts[0]
                     else "square" if n4 < self.n4_cuts[1] else "cross")
            row, col = (int(u > 0.375) + int(u > 0.625) for u in (y, x))  # between GRID centres
            size = "large" if area > self.area_cut[shape] else "small"
            out.append({"colour": COLOURS[k], "shape": shape, "size": size,
                        "position": POSITIONS[3 * row + col], "background": BACKGROUNDS[bg]})
        return out


def degrade(images: torch.Tensor, blur: float = 0.7, noise: float = 0.1, generator=None):
    """Gaussian blur (std `blur` pixels at 32x32, scaled with the size) and Gaussian noise
    (std `noise` in [-1, 1] units): a stand-in for the softness of generated images."""
    x, sigma = images, blur * images.shape[-1] / 32
    if sigma > 0:  # separable, 3 sigma each side
        r = math.ceil(3 * sigma)
        k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
        k = (k / k.sum()).expand(3, 1, 1, -1)
        x = F.pad(images, (r, r, r, r), mode="replicate")
        x = F.conv2d(F.conv2d(x, k, groups=3), k.transpose(2, 3), groups=3)
    return (x + noise * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


# ----------------------------------------------------------------------------- metrics
def attribute_accuracy(reads: list, named: list) -> dict:
    """{attr: {"acc", "n"}} over the items whose caption names attr, and "all": the fraction of items
    with every named attribute read right. Attributes a caption leaves out are free."""
    if len(reads) != len(named):
        raise ValueError(f"{len(reads)} reads but {len(named)} named dicts: they must pair up")
    hits, counts, all_right = {}, {}, 0
    for read, want in zip(reads, named, strict=True):
        if missing := set(want) - set(read):
            raise ValueError(f"the reads lack {sorted(missing)}: use Evaluator.read_pair for "
                             "two-object captions, Evaluator.read for one object")
        right = {k: read[k] == v for k, v in want.items()}
        for k, ok in right.items():
            hits[k], counts[k] = hits.get(k, 0) + ok, counts.get(k, 0) + 1
        all_right += all(right.values())
    return {k: {"acc": hits[k] / n, "n": n} for k, n in counts.items()} | {
        "all": {"acc": all_right / max(len(reads), 1), "n": len(reads)}}


def main():
    """python toy_data.py: rendering speed, evaluator accuracy, and assets/shapes_grid.png."""
    for sizes in ((32,), (32, 64, 128)):
        ds, wall, cpu = Shapes(2000, sizes), time.perf_counter(), time.process_time()
        [ds[i] for i in range(len(ds))]
        print(f"Shapes{sizes}: {len(ds) / (time.perf_counter() - wall):.0f} scenes/s wall, "
              f"{len(ds) / (time.process_time() - cpu):.0f} per CPU-second")
    evaluator, g = Evaluator(), torch.Generator().manual_seed(0)
    for two, size in ((two, size) for two in (False, True) for size in (32, 64, 128)):
        batch = shapes_collate([Shapes(1000, (size,), seed=1, two_objects=two)[i] for i in range(1000)])
        for blur, noise in ((0.0, 0.0), (0.7, 0.1), (1.0, 0.2)):
            x, start = degrade(batch["images"][size], blur, noise, g), time.perf_counter()
            reads = (evaluator.read_pair if two else evaluator.read)(x)
            speed = len(x) / (time.perf_counter() - start)
            acc = attribute_accuracy(reads, batch["attrs"])
            print(f"two_objects={two} {size}px blur {blur} noise {noise} ({speed:.0f} images/s): "
                  + ", ".join(f"{k} {v['acc']:.3f}" for k, v in acc.items()))
    one, two = Shapes(16), Shapes(8, two_objects=True)
    batch = shapes_collate([one[i] for i in range(16)] + [two[i] for i in range(8)])
    print("wrote", save_grid(batch["images"][32], batch["caption"], "assets/shapes_grid.png"))


if __name__ == "__main__":
    main()
