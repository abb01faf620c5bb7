"""Tests for real_data.py: IDX, CIFAR-10 and image-folder loaders, held-out splits, the class evaluator."""

import gzip
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import real_data as rd
from toy_data import attribute_accuracy, shapes_collate

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def write_idx(path, array, gz=False):
    """IDX by hand: 00 00, type 08 (unsigned byte), ndim, each size as a big-endian int32, the bytes."""
    a = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)


def write_idx_set(root, n_train=20, n_test=10, size=28, gz=True, seed=0):
    """train-* and t10k-* image/label files of random images, labels i mod 10; returns the arrays."""
    root.mkdir(parents=True)
    rng, out = np.random.default_rng(seed), {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = rng.integers(0, 256, (n, size, size), dtype=np.uint8), np.arange(n) % 10
        write_idx(root / f"{split}-images-idx3-ubyte{'.gz' * gz}", images, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{'.gz' * gz}", labels, gz)
        out[split] = images, labels
    return out


# ----------------------------------------------------------------------------- IDX
def test_read_idx_format_and_errors(tmp_path):
    (tmp_path / "a").write_bytes(bytes.fromhex("00000801 00000003") + bytes([7, 8, 9]))  # the spec's layout
    assert rd.read_idx(tmp_path / "a").tolist() == [7, 8, 9]
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        write_idx(tmp_path / "b", a, gz)
        got = rd.read_idx(tmp_path / "b")
        assert got.dtype == np.uint8 and np.array_equal(got, a)
    raw = (tmp_path / "b").read_bytes()
    (tmp_path / "c").write_bytes(raw[:-5])  # a gzip stream cut short
    with pytest.raises(ValueError, match="damaged gzip"):
        rd.read_idx(tmp_path / "c")
    write_idx(tmp_path / "d", a)
    raw = (tmp_path / "d").read_bytes()
    for bad, why in ((raw[:-1], "truncated"), (b"\x00\x01" + raw[2:], "not an IDX"),
                     (raw[:2] + b"\x0d" + raw[3:], "unsigned bytes")):  # 0x0D: float32 IDX
        (tmp_path / "d").write_bytes(bad)
        with pytest.raises(ValueError, match=why):
            rd.read_idx(tmp_path / "d")


def test_idx_captions_pad_rgb_labels_and_split(tmp_path):
    root = tmp_path / "fashion-mnist"
    arrays = write_idx_set(root)
    train, test = rd.IDXCaptions(root), rd.IDXCaptions(root, train=False)
    assert len(train) == 20 and len(test) == 10 and train.classes == rd.FASHION
    item = train[3]  # label 3: dress
    x = item["images"][32]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    raw = torch.from_numpy(arrays["train"][0][3]).float() / 127.5 - 1
    assert torch.equal(x[0, 2:30, 2:30], raw)  # 28x28 centred: 2 px of black each side
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, border] == -1).all()
    assert item["label"] == 3 and item["named"] == {"class": "dress"}
    assert item["caption"] in {t.format("a dress") for t in rd.IDX_TEMPLATES}
    assert train[9]["caption"].endswith(" of an ankle boot")
    held = torch.from_numpy(arrays["t10k"][0][0]).float() / 127.5 - 1
    assert torch.equal(test[0]["images"][32][1, 2:30, 2:30], held)  # train=False reads the t10k files
    batch = shapes_collate([train[i] for i in range(4)])
    assert batch["images"][32].shape == (4, 3, 32, 32) and batch["label"] == [0, 1, 2, 3]


def test_idx_template_choice_is_seeded(tmp_path):
    write_idx_set(tmp_path / "fashion", n_train=40)
    captions = lambda seed: [rd.IDXCaptions(tmp_path / "fashion", seed=seed)[i]["caption"] for i in range(40)]
    first = captions(0)
    assert first == captions(0) and first != captions(1)
    assert len({c.split(" of ")[0] for c in first}) == len(rd.IDX_TEMPLATES)  # every template drawn


def test_idx_classes_from_the_path_or_chosen(tmp_path):
    for name in ("mnist", "kmnist", "data"):
        write_idx_set(tmp_path / name)
    assert rd.IDXCaptions(tmp_path / "mnist")[7]["caption"].endswith(" the digit seven")
    assert rd.IDXCaptions(tmp_path / "mnist")[7]["named"] == {"class": "seven"}
    assert rd.IDXCaptions(tmp_path / "kmnist")[1]["caption"].endswith(" the hiragana ki")
    with pytest.raises(ValueError, match="folder's name or a parent's"):
        rd.IDXCaptions(tmp_path / "data")
    assert rd.IDXCaptions(tmp_path / "data", classes="digits")[2]["named"] == {"class": "two"}
    with pytest.raises(ValueError, match="letters"):
        rd.IDXCaptions(tmp_path / "data", classes="letters")


def test_idx_errors_and_other_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        rd.IDXCaptions(tmp_path / "fashion")
    root = tmp_path / "fashion"
    write_idx_set(root, gz=False)  # uncompressed files read the same
    assert len(rd.IDXCaptions(root)) == 20
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        rd.IDXCaptions(root, train=False)
    write_idx(root / "train-labels-idx1-ubyte", np.arange(19) % 10)
    with pytest.raises(ValueError, match=r"labels \[N\]"):
        rd.IDXCaptions(root)
    write_idx(root / "train-labels-idx1-ubyte", np.full(20, 12))
    with pytest.raises(ValueError, match="only 10 classes"):
        rd.IDXCaptions(root)
    big = tmp_path / "fashion-big"  # larger than 32: cropped square and area-resized
    big.mkdir()
    write_idx(big / "train-images-idx3-ubyte", np.full((3, 40, 40), 200))
    write_idx(big / "train-labels-idx1-ubyte", [0, 1, 2])
    assert torch.allclose(rd.IDXCaptions(big)[0]["images"][32], torch.full((3, 32, 32), 200 / 127.5 - 1))


def test_open_dataset_dispatches_and_checks(tmp_path):
    write_idx_set(tmp_path / "fashion")
    ds = rd.open_dataset(f"fashion_mnist:{tmp_path / 'fashion'}", train=False, seed=3)
    assert isinstance(ds, rd.IDXCaptions) and len(ds) == 10 and ds.seed == 3
    with pytest.raises(ValueError, match="32x32 only"):
        rd.open_dataset(f"fashion_mnist:{tmp_path / 'fashion'}", sizes=(32, 64))
    for bad in ("mnist:/x", "folder", "shapes"):
        with pytest.raises(ValueError, match="must be one of"):
            rd.open_dataset(bad)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed (apt-get install "
                    "dataset-fashion-mnist puts it in /usr/share/datasets/fashion-mnist)")
def test_real_fashion_mnist():
    train, test = rd.IDXCaptions(FASHION_MNIST), rd.IDXCaptions(FASHION_MNIST, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train[0]["named"] == {"class": "ankle boot"} and test[1]["named"] == {"class": "pullover"}
    x = test[0]["images"][32]
    assert x.min() == -1 and x.max() <= 1 and (x[:, :2] == -1).all()


# ----------------------------------------------------------------------------- CIFAR-10
def write_cifar(root, n=6):
    """CIFAR-10's python format: pickled dicts, data uint8 [N, 3072] (R, G, B planes), labels."""
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    batches = {}
    for k, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": [(k + j) % 10 for j in range(n)], b"batch_label": b"x"}
        data = pickle.dumps(batches[name], protocol=2)
        if name == "data_batch_1":  # as in the original files, written with numpy 1.x
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (root / name).write_bytes(data)
    return batches


def test_cifar_loader(tmp_path):
    batches = write_cifar(tmp_path / "cifar")
    train = rd.CIFAR10Captions(tmp_path / "cifar")
    test = rd.open_dataset(f"cifar10:{tmp_path / 'cifar'}", train=False)
    assert len(train) == 30 and len(test) == 6
    raw = batches["data_batch_2"][b"data"][1]  # item 7 = second batch, item 1 (label 2, bird)
    assert torch.equal(train[7]["images"][32], torch.from_numpy(raw.reshape(3, 32, 32)) / 127.5 - 1)
    assert train[7]["label"] == 2 and train[7]["caption"] == "a picture of a bird"  # template 7 % 4
    assert train[7]["named"] == {"class": "bird"}
    assert train[0]["caption"] == "a photo of an airplane"
    raw = batches["test_batch"][b"data"][0]
    assert torch.equal(test[0]["images"][32], torch.from_numpy(raw.reshape(3, 32, 32)) / 127.5 - 1)
    with pytest.raises(FileNotFoundError, match="not found"):
        rd.CIFAR10Captions(tmp_path / "nowhere")
    (tmp_path / "cifar" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        rd.CIFAR10Captions(tmp_path / "cifar")
    with open(tmp_path / "cifar" / "test_batch", "wb") as f:  # a pickle that would run code
        pickle.dump({b"data": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        rd.CIFAR10Captions(tmp_path / "cifar", train=False)


# ----------------------------------------------------------------------------- image folder
def test_image_folder_loader(tmp_path):
    rgba = Image.new("RGBA", (64, 70), (255, 0, 0, 0))  # fully transparent -> white
    images = {"a.png": rgba, "b.jpg": Image.new("RGB", (64, 48), (0, 0, 255)),
              "sub/c.gif": Image.new("P", (33, 33)), "d.png": Image.new("L", (50, 50), 0)}
    for name, im in images.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        im.save(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(f"caption of\n{name}\n")
    (tmp_path / "d.txt").unlink()  # no caption
    (tmp_path / "e.png").write_bytes(b"not an image")
    (tmp_path / "e.txt").write_text("broken")
    with pytest.warns(UserWarning, match="'no caption': 1.*'unreadable': 1.*'too small': 2"):
        ds = rd.ImageFolderCaptions(tmp_path, sizes=(32, 64), holdout=0)
    assert len(ds) == 1 and [p.name for p in ds.skipped["unreadable"]] == ["e.png"]
    assert sorted(p.name for p in ds.skipped["too small"]) == ["b.jpg", "c.gif"]  # 48 and 33 px < 64
    item = ds[0]
    assert item["caption"] == "caption of a.png"
    assert item["images"][32].shape == (3, 32, 32) and item["images"][64].shape == (3, 64, 64)
    assert torch.allclose(item["images"][32], torch.ones(3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blue = rd.ImageFolderCaptions(tmp_path, sizes=32, holdout=0)
    assert len(blue) == 3 and torch.allclose(blue[1]["images"][32][2], torch.ones(32, 32), atol=0.02)
    with pytest.raises(FileNotFoundError):
        rd.ImageFolderCaptions(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable"):
        rd.ImageFolderCaptions(tmp_path / "empty")
    with pytest.raises(ValueError, match="powers of two"):
        rd.ImageFolderCaptions(tmp_path, sizes=(32, 48))


def test_image_folder_views_agree(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (160, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")  # 128 x 160: cropped to its centre square
    (tmp_path / "a.txt").write_text("noise")
    views = rd.ImageFolderCaptions(tmp_path, sizes=(32, 64, 128), holdout=0)[0]["images"]
    assert torch.equal(views[128], torch.from_numpy(noise[16:144]).permute(2, 0, 1) / 127.5 - 1)
    for s in (32, 64):  # each view an area average of the 128 view, to the uint8 rounding
        assert (views[s] - F.avg_pool2d(views[128][None], 128 // s)[0]).abs().max() <= 0.5 / 127.5 + 1e-6


def write_folder(root, sides):
    """One image per side length, each with its own caption 'image k', plus a pair sharing one."""
    root.mkdir()
    for k, side in enumerate(sides):
        Image.new("RGB", (side, side), (k, 0, 0)).save(root / f"{k}.png")
        (root / f"{k}.txt").write_text(f"image {k}" if k < len(sides) - 1 else "image 0")


def test_image_folder_held_out_split(tmp_path):
    write_folder(tmp_path / "f", [32] * 10 + [128] * 10 + [128])  # 20 distinct captions
    split = {}
    for sizes in ((32,), (32, 64)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # at 64 px the 32 px images are too small
            for train in (True, False):
                ds = rd.ImageFolderCaptions(tmp_path / "f", sizes, train=train, seed=0)
                split[sizes, train] = {c for _, c in ds.items}
    train, held = split[(32,), True], split[(32,), False]
    assert not train & held and len(train | held) == 20 and len(held) == 2  # 10% of 20 captions
    assert split[(32, 64), True] <= train and split[(32, 64), False] <= held  # whatever the sizes
    other = {c for _, c in rd.ImageFolderCaptions(tmp_path / "f", train=False, seed=1).items}
    assert other != held and len(other) == 2
    both = rd.ImageFolderCaptions(tmp_path / "f", train="image 0" not in held)
    assert sum(c == "image 0" for _, c in both.items) == 2  # the images of one caption stay together
    write_folder(tmp_path / "one", [32, 32])
    with pytest.raises(ValueError, match="at least 2 distinct"):
        rd.ImageFolderCaptions(tmp_path / "one")
    with pytest.raises(ValueError, match="held-out split"):
        rd.ImageFolderCaptions(tmp_path / "one", train=False, holdout=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rd.ImageFolderCaptions(tmp_path / "f", holdout=1.0)
    assert len(rd.open_dataset(f"folder:{tmp_path / 'f'}", train=False)) == len(held)


def test_image_folder_skips_truncated_and_float_images_and_reads_16_bit_grey_and_exif_turns(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))  # dark left, bright right
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    Image.fromarray((ramp // 257).astype(np.uint8)).save(tmp_path / "grey8.png")
    shown = np.zeros((64, 64, 3), np.uint8)
    shown[:16] = (255, 0, 0)  # red on top, as it is shown...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...stored turned: orientation 6 says rotate 90 degrees clockwise to show it
    Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", exif=exif)
    Image.fromarray(np.full((64, 64), 0.5, np.float32)).save(tmp_path / "float.tif")  # mode F
    Image.new("RGB", (64, 64), (0, 0, 255)).save(tmp_path / "cut.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "cut.jpg").read_bytes()[:300])  # truncated mid-scan
    for name in ("grey16", "grey8", "turned", "cut", "float"):
        (tmp_path / f"{name}.txt").write_text(name)
    with pytest.warns(UserWarning, match="'unreadable': 1, 'float pixels': 1"):
        ds = rd.ImageFolderCaptions(tmp_path, sizes=(32,), holdout=0)
    assert [p.name for p in ds.skipped["unreadable"]] == ["cut.jpg"]
    assert [p.name for p in ds.skipped["float pixels"]] == ["float.tif"]
    item = {c: ds[k]["images"][32] for k, (_, c) in enumerate(ds.items)}
    assert (item["grey16"] - item["grey8"]).abs().max() <= 1 / 127.5 + 1e-6  # scaled, not clipped to white
    top, bottom = item["turned"][:, :4].mean((1, 2)), item["turned"][:, -4:].mean((1, 2))
    assert top[0] > 0.5 and bottom[0] < -0.5  # red at the top: turned the way its EXIF shows it


def test_a_folder_split_treats_captions_differing_in_case_as_one(tmp_path):
    for k in range(20):
        for j, caption in enumerate((f"Photo {k}", f"photo {k}")):  # one caption to the lowercasing tokenizer
            Image.new("RGB", (32, 32), (k, j, 0)).save(tmp_path / f"{k}_{j}.png")
            (tmp_path / f"{k}_{j}.txt").write_text(caption)
    train, held = ({c.lower() for _, c in rd.ImageFolderCaptions(tmp_path, train=t, holdout=0.25).items}
                   for t in (True, False))
    assert len(held) == 5 and not train & held


def test_idx_classes_come_from_the_folder_itself_before_its_parents(tmp_path):
    write_idx_set(tmp_path / "fashion_project" / "mnist")
    assert rd.IDXCaptions(tmp_path / "fashion_project" / "mnist")[7]["named"] == {"class": "seven"}


def test_cifar_batches_pickled_with_protocol_5_load(tmp_path):
    batches = write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "test_batch").write_bytes(pickle.dumps(batches["test_batch"], protocol=5))
    raw = batches["test_batch"][b"data"][0]
    test = rd.CIFAR10Captions(tmp_path / "cifar", train=False)
    assert torch.equal(test[0]["images"][32], torch.from_numpy(raw.reshape(3, 32, 32)) / 127.5 - 1)


# ----------------------------------------------------------------------------- evaluator
def quadrants(n, seed):
    """Trivially separable: a bright 16x16 square in quadrant k (the label) on noise, uint8."""
    g = torch.Generator().manual_seed(seed)
    u, labels = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(n) % 4
    for i, k in enumerate(labels.tolist()):
        u[i, :, 16 * (k // 2):16 * (k // 2) + 16, 16 * (k % 2):16 * (k % 2) + 16] += 180
    return u, labels


CLASSES = ("top left", "top right", "bottom left", "bottom right")


@pytest.fixture(scope="module")
def trained():
    return rd.ClassEvaluator.fit(*quadrants(256, 0), CLASSES, steps=30, batch=16, width=8, seed=0)


def test_classifier_learns_a_separable_set(trained):
    u, labels = quadrants(200, 1)
    assert rd.ClassEvaluator(CLASSES).accuracy(u, labels) < 0.6  # untrained: about chance, 0.25
    assert trained.accuracy(u, labels) >= 0.95
    reads = trained.read(u.float() / 127.5 - 1)  # float in [-1, 1] reads as its uint8
    assert reads == trained.read(u) and set(reads[0]) == {"class"}
    named = [{"class": CLASSES[k]} for k in labels]
    assert attribute_accuracy(reads, named)["class"]["acc"] == trained.accuracy(u, labels)
    assert trained.read(u.repeat_interleave(2, 2).repeat_interleave(2, 3)) == reads  # 64 px: area to 32
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        trained.read(u[:, :1])


def test_classifier_fit_is_seeded_and_checks_inputs():
    u, labels = quadrants(64, 0)
    state = torch.random.get_rng_state()
    a, b = (rd.ClassEvaluator.fit(u, labels, CLASSES, steps=3, batch=8, seed=5) for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    assert all(torch.equal(p, b.state_dict()[k]) for k, p in a.state_dict().items())
    c = rd.ClassEvaluator.fit(u, labels, CLASSES, steps=3, batch=8, seed=6)
    assert not torch.equal(a.head.weight, c.head.weight)
    for bad_u, bad_labels in ((u.float(), labels), (u, labels + 1), (u[:, :, :16], labels), (u, labels[:5])):
        with pytest.raises(ValueError, match="need u uint8"):
            rd.ClassEvaluator.fit(bad_u, bad_labels, CLASSES, steps=1)


def test_classifier_frechet_distance(trained):
    u, labels = quadrants(400, 2)
    x = u[labels == 0]
    assert abs(trained.frechet(x, x)) < 1e-6
    shifts = [trained.frechet(x, (x.float() + d).clamp(0, 255).to(torch.uint8)) for d in (10, 30, 60)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]
    same, other = trained.frechet(x[:50], x[50:]), trained.frechet(x[:50], u[labels == 3][:50])
    assert same < other / 5  # a new sample of the same images vs a different class


def test_classifier_save_load(tmp_path, trained):
    path = trained.save(tmp_path / "sub" / "classifier.pt")
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]  # written aside, renamed
    back = rd.ClassEvaluator.load(path)
    u, _ = quadrants(32, 3)
    assert back.classes == list(CLASSES) and back.info == trained.info
    assert torch.equal(back(u.float() / 127.5 - 1), trained(u.float() / 127.5 - 1))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    torch.save({"classes": ["a"], "width": 16}, tmp_path / "partial.pt")
    for bad in ("junk.pt", "partial.pt", "missing.pt"):
        with pytest.raises(ValueError, match="not a saved classifier"):
            rd.ClassEvaluator.load(tmp_path / bad)


def test_classifier_load_or_train(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "fashion", n_train=40)
    train, test = rd.IDXCaptions(tmp_path / "fashion"), rd.IDXCaptions(tmp_path / "fashion", train=False)
    path, lines = tmp_path / "classifier.pt", []
    ev = rd.ClassEvaluator.load_or_train(path, train, test, log=lines.append, steps=2, batch=8)
    assert path.exists() and 0 <= ev.info["test_accuracy"] <= 1 and "held-out accuracy" in lines[-1]
    u, labels = rd.labelled_arrays(test)
    assert u.shape == (10, 3, 32, 32) and u.dtype == torch.uint8 and labels.tolist() == list(range(10))
    assert ev.info["test_accuracy"] == ev.accuracy(u, labels)
    monkeypatch.setattr(rd.ClassEvaluator, "fit", lambda *a, **k: pytest.fail("trained again"))
    again = rd.ClassEvaluator.load_or_train(path, train, test, log=lines.append)
    assert torch.equal(again.head.weight, ev.head.weight)
    saved = path.read_bytes()
    write_idx_set(tmp_path / "other-fashion", seed=1)
    with pytest.raises(ValueError, match="other data"):
        rd.ClassEvaluator.load_or_train(path, rd.IDXCaptions(tmp_path / "other-fashion"))
    assert path.read_bytes() == saved  # never overwritten
    write_folder(tmp_path / "folder", [32, 32, 32])
    with pytest.raises(ValueError, match="no labels"):
        rd.labelled_arrays(rd.ImageFolderCaptions(tmp_path / "folder"))


def test_classifier_fit_trains_under_no_grad():  # train_toy.evaluate runs under torch.no_grad
    with torch.no_grad():
        ev = rd.ClassEvaluator.fit(*quadrants(64, 0), CLASSES, steps=2, batch=8, seed=0)
        assert not torch.is_grad_enabled()  # and stays so for the caller
    torch.manual_seed(0)
    assert not torch.equal(ev.head.weight, rd.ClassEvaluator(CLASSES).head.weight)  # moved from its init


def test_class_grid_puts_each_class_on_its_row(tmp_path):
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # red, green, blue, yellow
    images = colours[:, :, None, None].expand(4, 3, 32, 32)
    named = [{"class": c} for c in ("b", "a", "b", "a")]
    path = rd.save_class_grid(images, ["x"] * 4, named, ["a", "b", "c"], tmp_path / "g.png", per_class=3)
    grid = np.asarray(Image.open(path))
    cell_w, cell_h = 32 * 4 + 4, grid.shape[0] // 3  # 128 px images and a caption line per cell, pad 4
    assert grid.shape[1] == 3 * cell_w + 4
    centre = lambda row, col: tuple(grid[4 + row * cell_h + 64, 4 + col * cell_w + 64])
    assert [centre(0, 0), centre(0, 1), centre(1, 0), centre(1, 1)] == [
        (0, 255, 0), (255, 255, 0), (255, 0, 0), (0, 0, 255)]  # class a: images 1, 3; class b: 0, 2
    assert {centre(r, c) for r, c in ((0, 2), (1, 2), (2, 0), (2, 1), (2, 2))} == {(255, 255, 255)}  # blanks


def test_accuracy_needs_a_label_per_image(trained):
    u, labels = quadrants(8, 1)
    with pytest.raises(ValueError, match="8 images but 1 labels"):
        trained.accuracy(u, labels[:1])
