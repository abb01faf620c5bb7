"""metrics.py: the Frechet distance and CLIP score against closed forms, the grid and chart writers
pixel by pixel."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import metrics
import toy_data


def exact_gaussian_sample(mean, cov, n, seed):
    """n points whose empirical mean and (unbiased) covariance are exactly mean and cov."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whiten exactly
    return z @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_closed_forms():
    # 2-D, non-commuting covariances: tr sqrt(A) = sqrt(tr A + 2 sqrt(det A)) for 2x2 PSD A,
    # with A = S1^1/2 S2 S1^1/2: tr A = tr(S1 S2), det A = det S1 det S2
    m1, m2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.0],
                                                                          dtype=torch.float64)
    s1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=torch.float64)
    tr_root = math.sqrt((s1 @ s2).trace() + 2 * math.sqrt(s1.det() * s2.det()))
    want = ((m1 - m2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_root
    x, y = exact_gaussian_sample(m1, s1, 50, 0), exact_gaussian_sample(m2, s2, 70, 1)
    assert metrics.frechet_distance(x, y) == pytest.approx(want.item(), rel=1e-9)
    assert metrics.frechet_distance(y.float(), x.float()) == pytest.approx(want.item(), rel=1e-5)
    # 16-D, same eigenvectors: sum (sqrt a - sqrt b)^2, after a shared random rotation
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2),
                                       dtype=torch.float64))
    a, b = torch.linspace(0.1, 3, 16, dtype=torch.float64), torch.linspace(2, 0.5, 16,
                                                                           dtype=torch.float64)
    x = exact_gaussian_sample(torch.zeros(16), q @ torch.diag(a) @ q.T, 100, 3)
    y = exact_gaussian_sample(torch.ones(16), q @ torch.diag(b) @ q.T, 100, 4)
    want = 16 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()
    assert metrics.frechet_distance(x, y) == pytest.approx(want, rel=1e-9)
    assert abs(metrics.frechet_distance(x, x)) < 1e-9


def test_clip_score():
    z_i = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]) / torch.tensor([[1.0], [math.sqrt(2)]])
    assert metrics.clip_score(z_i, z_t) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_save_grid(tmp_path):
    ds = toy_data.Shapes(10, (32,), seed=1)
    b = toy_data.shapes_collate([ds[i] for i in range(10)])
    path = metrics.save_grid(b["images"][32], b["caption"], tmp_path / "g" / "grid.png", ncol=4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temp file left
    sheet = np.array(Image.open(path))
    assert sheet.shape[1] == 4 + 4 * (128 + 4) and sheet.shape[0] > 3 * 128
    tile = sheet[4:132, 4:132]  # first image, enlarged 4x by nearest neighbour
    assert (tile[::4, ::4] == tile[3::4, 3::4]).all()
    first = ((b["images"][32][0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert (tile[::4, ::4] == first).all()
    assert (sheet[135:, :132] < 128).any()  # caption text under it


def test_save_charts_draws_each_series_where_its_points_are(tmp_path):
    # the panel's box is (56, 40) - (368, 264) in a 380 x 300 panel; with 5% margins the data
    # rectangle maps x in [-0.05, 1.05] and y likewise onto it, so (0.5, 0.5) lands at the centre
    up = [(0, 0), (0.5, 0.5), (1, 1)]
    flat = [(0, 1), (1, 1)]  # the red series: a horizontal line at the top of the data
    path = metrics.save_charts([{"title": "t", "x": "x", "y": "y", "series": {"up": up, "flat": flat}},
                                {"title": "log", "x": "n", "y": "v", "log_x": True, "log_y": True,
                                 "series": {"a": [(1, 1), (100, 100)]}}], tmp_path / "c.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]
    sheet = np.array(Image.open(path).convert("RGB")).astype(int)
    assert sheet.shape == (300, 760, 3)
    blue, red = np.array([0x1F, 0x77, 0xB4]), np.array([0xD6, 0x27, 0x28])
    near = lambda x, y, c: (np.abs(sheet[y - 2:y + 3, x - 2:x + 3] - c).sum(-1) < 60).any()
    centre = (round(56 + 312 / 2), round(264 - 224 / 2))
    assert near(*centre, blue) and not near(*centre, red)
    top = round(264 - (1 + 0.05) / 1.1 * 224)  # y = 1
    assert near(round(56 + 0.3 * 312), top, red) and not near(round(56 + 0.3 * 312), centre[1] + 40, red)
    # log axes: y = 10 is half way up on a log scale, on the line from (1, 1) to (100, 100)
    assert near(380 + round(56 + 312 / 2), round(264 - 224 / 2), blue)
    with pytest.raises(ValueError, match="log x axis"):
        metrics.save_charts([{"title": "t", "x": "", "y": "", "log_x": True, "series": {"a": [(0, 1)]}}],
                            tmp_path / "d.png")
    with pytest.raises(ValueError, match="at least one point"):
        metrics.save_charts([{"title": "t", "x": "", "y": "", "series": {"a": []}}], tmp_path / "d.png")


def test_machine_names_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(metrics.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert metrics.usable_cpus() == 1  # e.g. under taskset -c 0 on a many-core host
    text = metrics.machine("cpu")
    assert text.startswith(f"{metrics.platform.system()} ") and ", 1 CPUs (" in text
    assert f"torch {torch.__version__}, device cpu" in text
    monkeypatch.delattr(metrics.os, "sched_getaffinity")  # macOS and Windows have no affinity call
    monkeypatch.setattr(metrics.os, "cpu_count", lambda: None)
    assert metrics.usable_cpus() == 1


def test_a_failed_write_without_a_message_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"good")

    def fails():
        (tmp_path / "x.pt.tmp").write_bytes(b"half")
        raise OSError()  # no message, as some file systems raise
    with pytest.raises(OSError, match=r"cannot write .*x\.pt \(OSError; \d+ MiB free there\)"):
        metrics.guarded(path, fails)
    assert path.read_bytes() == b"good" and not (tmp_path / "x.pt.tmp").exists()


def test_weights_id_is_the_same_for_the_same_bits_and_changes_with_one():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert metrics.weights_id(a) == metrics.weights_id(b)
    with torch.no_grad():
        b.bias[0] = torch.nextafter(b.bias[0], torch.tensor(1.0))  # one ulp
    assert metrics.weights_id(a) != metrics.weights_id(b)


def test_frechet_distance_of_a_set_with_itself_is_zero_not_rounding_below():
    x = torch.randn(100, 128, generator=torch.Generator().manual_seed(0))  # fewer samples than dimensions
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(x, x) >= 0.0


def test_an_atomic_write_reaches_the_disk_before_its_rename(tmp_path, monkeypatch):
    calls, real_fsync, real_replace = [], metrics.os.fsync, metrics.os.replace
    monkeypatch.setattr(metrics.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(metrics.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    metrics.save_atomic({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert calls[:2] == ["fsync", "replace"]  # the bytes, then the name; then the folder's entry (POSIX)
    assert calls[2:] == (["fsync"] if hasattr(metrics.os, "O_DIRECTORY") else [])
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["w"], torch.ones(2))
    assert not (tmp_path / "x.pt.tmp").exists()
