"""upsample.py: degradations, crops, the conv-only net at two sizes, training, sampling (an oracle
net on hard edges), saving."""

import math

import pytest
import torch
import torch.nn as nn

from diffusion import cosine_betas, linear_betas
from toy_data import Shapes, shapes_collate
from upsample import (
    Upsampler,
    UpsamplerConfig,
    bsr_degrade,
    degrade,
    gaussian_blur,
    jpeg,
    random_crop,
    resize,
    stage_config,
)

TINY = dict(low_res=8, high_res=16, channels=8, channel_mults=(1, 2), sample_steps=4)


def images(n: int, size: int, seed: int = 0, grid: int = 4) -> torch.Tensor:
    """Random colour images in [-1, 1]: grid x grid noise upsampled (smooth for small grid)."""
    g = torch.Generator().manual_seed(seed)
    return resize(torch.rand(n, 3, grid, grid, generator=g) * 2 - 1, size)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_blur_closed_form():
    # an impulse comes out as the outer product of two normalised 1-D Gaussians
    x = torch.zeros(2, 3, 9, 9)
    x[:, :, 4, 4] = 1
    sigma = torch.tensor([0.6, 1.5])
    y = gaussian_blur(x, sigma, kernel_size=5)
    for b, s in enumerate(sigma.tolist()):
        g1 = torch.tensor([math.exp(-(i**2) / (2 * s * s)) for i in range(-2, 3)])
        g1 = g1 / g1.sum()
        expected = (g1[:, None] * g1[None]).expand(3, 5, 5)
        assert torch.allclose(y[b, :, 2:7, 2:7], expected, atol=1e-6)
    assert torch.allclose(y.sum((2, 3)), torch.ones(2, 3), atol=1e-6)  # mass kept
    flat = torch.full((2, 3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, sigma, 3), flat)  # flat stays flat (reflect pad)


def test_resize_is_antialiased():
    # a one-pixel checkerboard averages to 0 when downsampled with a low-pass; nearest aliases to ±1
    board = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2.0 - 1
    board = board.expand(1, 3, 16, 16)
    assert resize(board, 8).abs().max() < 0.1
    assert resize(board, 8, "nearest").abs().min() == 1
    assert resize(images(2, 8), 32).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kind", ["blur", "bsr"])
def test_degradation_shape_range_seed(kind):
    x = images(8, 16)
    a = degrade(x, kind, seeded(1))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, degrade(x, kind, seeded(1)))  # reproducible
    assert not torch.equal(a, degrade(x, kind, seeded(2)))  # and actually random
    assert (a - x).abs().mean() > 1e-3  # it does degrade
    with pytest.raises(ValueError, match="degradation"):
        degrade(x, "gauss")


def test_bsr_strength_varies_per_example():
    x = images(32, 16)
    err = (bsr_degrade(x, seeded(0)) - x).abs().flatten(1).mean(1)  # [B]
    assert (err < 1e-6).any() and (err > 1e-2).any()  # some untouched, some degraded
    assert err.unique().numel() > 8


def test_jpeg_quality_orders_error():
    x = images(2, 16)
    high, low = jpeg(x, torch.tensor([95, 95])), jpeg(x, torch.tensor([5, 5]))
    assert 3 * (high - x).abs().mean() < (low - x).abs().mean()
    assert torch.equal(jpeg(x, torch.tensor([5, 95]))[1], high[1])  # quality is per image


def test_crop_area_and_alignment():
    # give every pixel a unique id in both halves, so a crop reveals where it came from
    B, H, s = 6, 16, 8
    ids = torch.arange(B * H * H, dtype=torch.float32).reshape(B, 1, H, H)
    x = torch.cat([ids.expand(B, 3, H, H), ids.expand(B, 3, H, H) + 0.5], dim=1)  # target|cond
    crop = random_crop(x, s, seeded(0))
    assert crop.shape == (B, 6, s, s) and crop[0, 0].numel() * 4 == H * H  # a quarter of the area
    target, cond = crop.chunk(2, dim=1)
    assert torch.equal(cond - 0.5, target)  # the same window in target and conditioning
    corners = set()
    for b in range(B):
        top, left = divmod(int(target[b, 0, 0, 0]) - b * H * H, H)
        assert torch.equal(crop[b], x[b, :, top:top + s, left:left + s])  # a contiguous window
        corners.add((top, left))
    assert len(corners) > 1  # one window per example, not one per batch
    assert any(top != left for top, left in corners)  # rows and columns drawn independently


def test_loss_crops_target_and_conditioning_alike():
    seen = {}

    def capture(model, x_0, t, noise=None, cond=None):  # stands in for the diffusion loss
        seen.update(x_0=x_0, cond=cond)
        return {"loss": x_0.sum() * 0}

    x = images(8, 16)  # smooth: down- and up-sampling barely changes it
    for residual in (False, True):
        model = Upsampler(UpsamplerConfig(**{**TINY, "augment_prob": 0.0, "residual": residual}))
        model.diffusion.training_losses = capture
        model.loss(x, seeded(0))
        assert seen["x_0"].shape == seen["cond"].shape == (8, 3, 8, 8)
        target = seen["x_0"] + seen["cond"] if residual else seen["x_0"]  # x_0 = r + up(lo)
        # the conditioning crop shows the same region as the target crop, not a shifted one
        assert (seen["cond"] - target).abs().mean() < 0.05
        assert (seen["cond"] - target.roll(2, dims=-1)).abs().mean() > 0.1
    # augment_prob=1 blurs every conditioning image (full size here, so it lines up with x)
    clean = resize(resize(x, 8), 16)
    model = Upsampler(UpsamplerConfig(**{**TINY, "augment_prob": 1.0, "crop": False,
                                         "residual": False}))
    model.diffusion.training_losses = capture
    model.loss(x, seeded(0))
    assert torch.equal(seen["x_0"], x)
    tv = lambda img: (img[..., 1:] - img[..., :-1]).abs().flatten(1).mean(1)  # total variation
    assert (tv(seen["cond"]) < tv(clean)).all()
    # uncropped and clean, in closed form on hard edges: cond = up(box average of x), and the
    # residual model is trained on r = x - cond
    hi = hard_edged(8, 16)[1]
    model = Upsampler(UpsamplerConfig(**{**TINY, "augment_prob": 0.0, "crop": False}))
    model.diffusion.training_losses = capture
    model.loss(hi, seeded(0))
    cond = resize(hi.unflatten(2, (8, 2)).unflatten(4, (8, 2)).mean((3, 5)), 16)
    assert torch.allclose(seen["cond"], cond, atol=1e-6)
    assert torch.allclose(seen["x_0"], hi - cond, atol=1e-6)


def test_conditioning_is_made_in_fp32_under_autocast():
    seen = []
    model = Upsampler(UpsamplerConfig(**{**TINY, "augment_prob": 1.0}))
    model.diffusion.training_losses = lambda model, x_0, t, noise=None, cond=None: (
        seen.append(cond) or {"loss": x_0.sum() * 0})
    x = images(4, 16)
    model.loss(x, seeded(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast around the whole loss
        model.loss(x, seeded(0))
    assert seen[1].dtype == torch.float32 and torch.equal(seen[0], seen[1])


def test_net_accepts_crop_and_full_size():
    model = Upsampler(UpsamplerConfig(**TINY))
    for size in (8, 16):  # crop (training) and full (sampling) size
        x = torch.randn(2, 3, size, size)
        assert model(x, torch.tensor([0, 999]), x).shape == (2, 3, size, size)
    seen = []  # the spatial size the U-Net is trained on
    for crop in (True, False):
        m = Upsampler(UpsamplerConfig(**{**TINY, "crop": crop}))
        m.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
        m.loss(images(2, 16), seeded(0))
    assert seen == [8, 16]  # half-side crops (a quarter of the area) unless crop=False


@pytest.mark.parametrize("mean_type,residual,ratio", [("eps", False, 0.5), ("x0", True, 0.7)])
def test_loss_falls_when_overfitting(mean_type, residual, ratio):
    torch.manual_seed(0)
    cfg = UpsamplerConfig(**{**TINY, "channels": 16, "mean_type": mean_type, "residual": residual})
    model = Upsampler(cfg)
    x = images(4, 16, grid=8).repeat(4, 1, 1, 1)  # 4 images, 16 draws of t and noise per step
    before = model.loss(x, seeded(123)).item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        loss = model.loss(x, seeded(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.loss(x, seeded(123)).item()  # same t, noise, crops and degradation as before
    if mean_type == "eps":  # the zero-initialised output predicts eps = 0: loss E[eps^2] = 1
        assert before == pytest.approx(1.0, abs=0.15)
    assert after < ratio * before
    # the conditioning image matters to the trained net
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 100])
    cond = resize(resize(x[:2], 8), 16)
    assert (model(x_t, t, cond) - model(x_t, t, -cond)).abs().mean() > 1e-2


# Shapes scenes (seed 0) whose high-res view misses bicubic by more than 1 somewhere: at hard
# edges the residual r = x_0 - up(lo) fills [-2, 2], though x_0 and up(lo) lie in [-1, 1]
HARD = {(8, 16): (19, 26, 28, 32), (32, 64): (28, 48, 93), (64, 128): (10, 18, 31, 32)}


def hard_edged(low_res: int, high_res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi): two views of the scenes HARD names, [B,3,h,h] and [B,3,H,H]."""
    data = Shapes(100, sizes=(low_res, high_res), seed=0)
    views = shapes_collate([data[i] for i in HARD[low_res, high_res]])["images"]
    lo, hi = views[low_res], views[high_res]
    r = hi - resize(lo, high_res)
    assert (r.abs().flatten(1).amax(1) > 1).all(), "HARD no longer names hard-edged scenes"
    return lo, hi


class Oracle(nn.Module):
    """Stands in for the U-Net: knows the true high-res images and returns, for any x_t, exactly
    what a perfect net predicts for them: x_0 or eps [DDPM] Eq. 4 of the diffused variable."""

    def __init__(self, model: Upsampler, hi: torch.Tensor):
        super().__init__()
        cfg = model.cfg
        betas = (cosine_betas if cfg.schedule == "cosine" else linear_betas)(cfg.timesteps)
        self.alpha_bar = torch.cumprod(1 - betas, 0)  # float64, from the schedule's closed form
        self.cfg, self.hi = cfg, hi

    def forward(self, net_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x_t, cond = net_in.double().chunk(2, dim=1)
        x_0 = self.hi.double() - cond if self.cfg.residual else self.hi.double()
        if self.cfg.mean_type == "x0":
            return x_0.float()
        a = self.alpha_bar[t][:, None, None, None]
        return ((x_t - a.sqrt() * x_0) / (1 - a).sqrt()).float()


@pytest.mark.parametrize("stage,mean_type,residual,eta", [
    (1, "x0", True, 0.0), (2, "x0", True, 0.0), (2, "eps", True, 0.0), (2, "x0", True, None),
    (2, "eps", False, 0.0)])
def test_oracle_net_reconstructs_hard_edges(stage, mean_type, residual, eta):
    # With a perfect net every x_0 estimate is the truth, so the sampler must return it exactly:
    # the clip keeps the image estimate up(lo) + r̂ in [-1, 1], which the true r always meets.
    # Clipping r̂ itself to [-1, 1] cuts the edges where |r| > 1 (errors up to 0.14).
    model = Upsampler(stage_config(stage, mean_type=mean_type, residual=residual))
    lo, hi = hard_edged(model.cfg.low_res, model.cfg.high_res)
    model.net = Oracle(model, hi)
    out = model.sample(lo, eta=eta, generator=seeded(0))
    assert (out - hi).abs().max() < 1e-4


def test_clip_bounds_the_image_not_the_residual():
    # a net that always predicts r̂ = +2 (x_0-parameterisation) gives the brightest image,
    # up(lo) + r̂ clipped to 1 at every pixel; an untrained one (r̂ = 0) gives bicubic exactly
    lo = hard_edged(8, 16)[0]
    model = Upsampler(UpsamplerConfig(**TINY))
    assert torch.allclose(model.sample(lo, generator=seeded(0)), resize(lo, 16), atol=1e-6)
    with torch.no_grad():
        model.net.out[-1].bias.fill_(2.0)
    assert torch.allclose(model.sample(lo, generator=seeded(0)), torch.ones(4, 3, 16, 16), atol=1e-6)


def test_untrained_eps_model_does_not_sample_bicubic():
    # the non-residual eps net starts at eps = 0, i.e. x_0 = x_t / sqrt(alpha_bar): noise
    lo = images(2, 8, grid=8)
    eps_model = Upsampler(UpsamplerConfig(**{**TINY, "mean_type": "eps", "residual": False}))
    assert not torch.allclose(eps_model.sample(lo, generator=seeded(0)), resize(lo, 16), atol=0.1)


def test_sample_size_seed_and_steps():
    model = Upsampler(UpsamplerConfig(**TINY))
    lo = images(2, 8)
    calls = []
    a = model.sample(lo, generator=seeded(0), progress=lambda i, n: calls.append(n))
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert calls == [4] * 4  # config.sample_steps respaced steps
    assert torch.equal(a, model.sample(lo, generator=seeded(0)))  # DDIM eta=0, same x_T
    assert model.sample(lo, steps=2, eta=None, generator=seeded(0)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\[B, 3, 8, 8\]"):
        model.sample(images(1, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\]"):
        model.loss(images(1, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.loss(images(1, 16) * 127.5 + 127.5)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**{**TINY, "degradation": "bsr", "schedule": "linear"}))
    for p in model.parameters():  # non-zero output layer, so the outputs say something
        p.data.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "up.pt"
    model.save(str(path))
    loaded = Upsampler.load(str(path), map_location="cpu")
    assert loaded.cfg == model.cfg and not (tmp_path / "up.pt.tmp").exists()
    lo = images(2, 8)
    expected = model.sample(lo, generator=seeded(0))
    assert torch.equal(loaded.sample(lo, generator=seeded(0)), expected)
    # a checkpoint whose config no longer fits its weights is refused with a clear message
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["channels"] = 16
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match"):
        Upsampler.load(str(path))
    ckpt["config"]["unknown_field"] = 1
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="does not fit"):
        Upsampler.load(str(path))
    del ckpt["config"]["unknown_field"], ckpt["config"]["schedule"]  # would fall back to cosine
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="missing fields.*schedule"):
        Upsampler.load(str(path))


def test_config_validation_and_stages():
    s1, s2 = stage_config(1), stage_config(2)
    assert (s1.low_res, s1.high_res, s1.degradation, s1.sample_steps) == (32, 64, "blur", 27)
    assert (s2.low_res, s2.high_res, s2.degradation, s2.sample_steps) == (64, 128, "blur", 15)
    assert s2.schedule == "linear"  # [unCLIP] Table 3 for the last stage
    with pytest.raises(ValueError, match="multiple"):
        UpsamplerConfig(low_res=8, high_res=20, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="low_res < high_res"):
        UpsamplerConfig(low_res=64, high_res=64)
