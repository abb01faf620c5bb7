"""Tests for toy_data.py: renderer, captions, evaluator, metrics."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import toy_data as td


@pytest.fixture(scope="module")
def evaluator():
    return td.Evaluator()


def batch_of(n, sizes, seed=1, **kw):
    ds = td.Shapes(n, sizes, seed=seed, **kw)
    return td.shapes_collate([ds[i] for i in range(n)])


def test_views_agree_across_resolutions():
    b = batch_of(64, (32, 64, 128))
    x32, x64, x128 = (b["images"][s] for s in (32, 64, 128))
    assert x32.shape == (64, 3, 32, 32) and x128.shape == (64, 3, 128, 128)
    assert x128.min() >= -1 and x128.max() <= 1
    # each view is the 2x2 (4x4) area average of the larger one, up to uint8 rounding
    step = 2 / 255
    assert (F.avg_pool2d(x64, 2) - x32).abs().max() <= 1.01 * step
    assert (F.avg_pool2d(x128, 4) - x32).abs().max() <= 2.01 * step
    # antialiased: edge pixels are mixtures, not just object and background colours
    assert len(torch.unique(x32[0].reshape(3, -1), dim=1).T) > 6
    # asking for fewer sizes gives the same pixels; items are pure functions of (seed, i)
    assert torch.equal(td.Shapes(64, (32,), seed=1)[5]["images"][32], x32[5])
    assert not torch.equal(td.Shapes(64, (32,), seed=2)[5]["images"][32], x32[5])


def test_holdout_respected():
    held = {("purple", "triangle"), ("red", "circle")}
    single = batch_of(400, (32,), holdout=held)["attrs"]
    pairs = {(a["colour"], a["shape"]) for a in single}
    assert not pairs & held and len(pairs) == 24 - len(held)  # all the others still appear
    double = batch_of(100, (32,), holdout=held, two_objects=True)["attrs"]
    for a in double:
        assert (a["left_colour"], a["left_shape"]) not in held
        assert (a["right_colour"], a["right_shape"]) not in held
        assert a["left_colour"] != a["right_colour"] and a["left_shape"] != a["right_shape"]
    with pytest.raises(ValueError, match="not .colour, shape. pairs"):
        td.Shapes(10, holdout=[("pink", "circle")])


def test_two_object_mix():
    """A fraction p of the scenes has two objects; the one-object scenes are those of p = 0."""
    alone, mix = (batch_of(1000, (32,), two_objects=p) for p in (0.0, 0.3))
    two = ["left_shape" in a for a in mix["attrs"]]
    assert abs(sum(two) / 1000 - 0.3) < 0.045  # binomial sd 0.0145
    assert all(a == b for a, b, t in zip(alone["attrs"], mix["attrs"], two, strict=True) if not t)
    assert all("left_shape" in a for a in batch_of(20, (32,), two_objects=1.0)["attrs"])
    with pytest.raises(ValueError, match="fraction in"):
        td.Shapes(10, two_objects=1.5)


@pytest.mark.parametrize("two_objects", [False, True])
def test_caption_names_what_it_claims(two_objects):
    b = batch_of(500, (32,), two_objects=two_objects)
    seen = {}
    for caption, named, attrs in zip(b["caption"], b["named"], b["attrs"], strict=True):
        assert td.parse_caption(caption) == named, caption
        assert all(attrs[k] == v for k, v in named.items()), (caption, attrs)
        for k in attrs:
            seen.setdefault(k, set()).add(k in named)
    always = {"left_colour", "left_shape", "right_colour", "right_shape"} if two_objects \
        else {"colour", "shape"}
    for k, states in seen.items():  # colour, shape always named; the rest only sometimes
        want = {True} if k in always else {False} if k.endswith("_size") else {True, False}
        assert states == want, k
    assert len(set(b["caption"])) > 150  # some wording variety
    assert td.parse_caption("A photo of an  orange cross on the right") == {
        "colour": "orange", "shape": "cross", "position": "right"}
    with pytest.raises(ValueError, match="cannot parse"):
        td.parse_caption("a red dog in the top left")


@pytest.mark.parametrize("size", [32, 64, 128])
def test_evaluator_reads_fresh_and_degraded_renders(evaluator, size):
    b = batch_of(300, (size,), seed=size)
    g = torch.Generator().manual_seed(size)
    for x in (b["images"][size], td.degrade(b["images"][size], blur=0.7, noise=0.1,
                                            generator=g)):
        acc = td.attribute_accuracy(evaluator.read(x), b["attrs"])
        assert set(acc) == set(td.ATTRIBUTES) | {"all"}
        assert all(v["acc"] >= 0.99 and v["n"] == 300 for v in acc.values()), acc


def lopsided(shape, size, extend):
    """A 32x32 red `shape` on white with its top arm (cross) or top vertex (triangle) lengthened by
    a bar `extend` circumradii long: how generated shapes go wrong."""
    R = td.RENDER_SIZE
    image, r = Image.new("RGB", (R, R), td.RGB["white"]), td.RADIUS[size] * R
    draw, h = ImageDraw.Draw(image), td.CROSS_ARM * r / math.hypot(1, td.CROSS_ARM)
    draw.polygon([(R / 2 + r * u, R / 2 + r * v) for u, v in td._outline(shape, 0.0)], fill=td.RGB["red"])
    draw.rectangle([R / 2 - h, R / 2 - r - extend * r, R / 2 + h, R / 2 - r + 2], fill=td.RGB["red"])
    pixels = np.asarray(image.resize((32, 32), Image.BOX)).copy()
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] / 127.5 - 1


@pytest.mark.parametrize("size", ["small", "large"])
def test_evaluator_reads_a_lopsided_cross_as_a_cross(evaluator, size):
    for extend in (0.3, 0.4):  # one arm 30-40% longer: its 3-fold moment passes the triangle cut
        x = lopsided("cross", size, extend)
        assert evaluator._measure(x / 2 + 0.5)["n3"].item() > evaluator.n3_cut
        assert evaluator.read(x)[0]["shape"] == "cross", extend
        assert evaluator.read(lopsided("triangle", size, extend))[0]["shape"] == "triangle", extend


def test_evaluator_two_objects_and_pil(evaluator):
    b = batch_of(200, (64,), two_objects=True)
    x = td.degrade(b["images"][64], blur=0.7, noise=0.1, generator=torch.Generator())
    acc = td.attribute_accuracy(evaluator.read_pair(x), b["attrs"])
    assert all(v["acc"] >= 0.99 for v in acc.values()), acc
    # a list of PIL images (any size >= 32) reads the same as the tensor
    one = batch_of(20, (128,))
    pil = [Image.fromarray(((im + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
           for im in one["images"][128]]
    assert evaluator.read(pil) == evaluator.read(one["images"][128]) == one["attrs"]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        evaluator.read(one["images"][128] * 127.5 + 127.5)
    with pytest.raises(ValueError, match=">= 32"):
        evaluator.read(torch.zeros(2, 3, 16, 16))


def test_attribute_accuracy_scores_only_named():
    reads = [{"colour": "red", "shape": "circle", "size": "small"},
             {"colour": "blue", "shape": "square", "size": "large"}]
    named = [{"colour": "red", "shape": "square"}, {"colour": "blue", "size": "large"}]
    acc = td.attribute_accuracy(reads, named)
    assert acc == {"colour": {"acc": 1.0, "n": 2}, "shape": {"acc": 0.0, "n": 1},
                   "size": {"acc": 1.0, "n": 1}, "all": {"acc": 0.5, "n": 2}}
    with pytest.raises(ValueError, match="read_pair"):
        td.attribute_accuracy(reads[:1], [{"left_colour": "red"}])


def test_dataloader_collates():
    loader = torch.utils.data.DataLoader(td.Shapes(10, (32, 64)), batch_size=4,
                                         collate_fn=td.shapes_collate)
    b = next(iter(loader))
    assert b["images"][64].shape == (4, 3, 64, 64) and len(b["caption"]) == 4
    assert isinstance(b["named"][0], dict) and set(b["attrs"][0]) == set(td.ATTRIBUTES)


def test_a_negative_seed_is_refused_when_the_set_is_made_not_in_a_worker():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        td.Shapes(4, (32,), seed=-1)
