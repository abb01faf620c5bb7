"""Diffusion upsamplers: the two super-resolution stages of the unCLIP cascade [unCLIP] Sec. 2.1.

The decoder makes a small image; two upsamplers lift it 32->64->128 here (64->256->1024 in the
paper). Each is a conv-only U-Net (decoder.py's UNet with no attention, no CLIP, no caption) that
sees only the low-resolution image, upsampled and concatenated to the noisy input [CDM].
Training corrupts that conditioning image a little (the paper: Gaussian blur for stage 1, a
BSR-style degradation for stage 2) so the cascade tolerates the decoder's imperfect outputs
[CDM], and uses random crops of a quarter of the target area; sampling runs the same fully
convolutional net on the whole image with few DDIM steps (paper: 27 and 15).

Two departures from the paper, each a config switch away from it:
  - the toy default diffuses the residual r = x_0 - up(lo) and predicts it directly
    (residual=True, mean_type="x0") instead of eps of the image (residual=False,
    mean_type="eps"), because only that trains in minutes of CPU (UpsamplerConfig.mean_type);
  - stage_config(2) trains on blurred inputs, a quarter of them degraded, not on BSR-degraded
    ones (degradation="bsr" is the paper's): the toy's 64x64 inputs are soft, never blocky.

Symbols:
    x_0     clean high-resolution image [B,3,H,W] in [-1,1]  (H = W = high_res)
    lo      low-resolution image        [B,3,h,w] in [-1,1]  (h = w = low_res)
    cond    up(lo): lo (degraded in training) upsampled to [B,3,H,W], the only conditioning
    r       the residual x_0 - cond: what is diffused when config.residual (else x_0 itself)
    x_t     the diffused variable noised to timestep t;  eps  its Gaussian noise
"""

import io
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from decoder import UNet, UNetConfig
from diffusion import GaussianDiffusion, cosine_betas, linear_betas, randn, rng_device


# ---------------------------------------------------------------- resizing and randomness
def resize(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """[B,C,h,w] -> [B,C,size,size] in [-1,1]; bilinear and bicubic are antialiased."""
    if mode in ("nearest", "area"):  # area = box average, antialiased by construction
        out = F.interpolate(x, size=(size, size), mode=mode)
    else:  # antialias low-passes before downsampling (no effect when upsampling)
        out = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return out.clamp(-1, 1)  # bicubic overshoots at edges


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n uniforms in [0, 1) on `device`."""
    return torch.rand(n, generator=generator, device=rng_device(generator, device)).to(device)


# ---------------------------------------------------------------- degradations (training only)
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per example: x [B,C,H,W], sigma [B] -> [B,C,H,W].

    All B*C channels are blurred by one grouped convolution, each with its own 1-D kernel.
    """
    B, C, H, W = x.shape
    r = kernel_size // 2
    offsets = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)           # [k]
    kernel = torch.exp(-(offsets**2) / (2 * sigma.to(x)[:, None] ** 2))          # [B,k]
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(C, dim=0)  # [B*C,k]
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=B * C)  # along rows
    y = F.conv2d(y, kernel[:, None, :, None], groups=B * C)  # along columns
    return y.reshape(B, C, H, W)


def blur_degrade(lo: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage-1 augmentation [unCLIP] Sec. 2.1: Gaussian blur, kernel 3, sigma ~ U(0.4, 0.8)."""
    sigma = 0.4 + 0.4 * _rand(lo.shape[0], generator, lo.device)  # centred on the paper's 0.6
    return gaussian_blur(lo, sigma, kernel_size=3)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG round trip through PIL, one quality (int 1..95) per image: [B,3,H,W] -> same."""
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    out = []
    for img, q in zip(pixels.numpy(), quality.tolist(), strict=True):  # PIL works per image
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(q))
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x) / 127.5 - 1


def bsr_degrade(lo: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage-2 augmentation: a BSR-style degradation [BSR], scaled down to toy sizes.

    Four operations in a random order (one order per call), each applied to a random half of the
    examples with per-example strength: Gaussian blur; down- then up-sampling with a random
    interpolation; additive Gaussian noise; JPEG compression. Shape and range are kept.
    The strengths are milder than BSR's, whose ranges are made for x4 on real photographs.
    """
    B, _, h, _ = lo.shape
    device, x = lo.device, lo.clone()

    def blur(x):  # [BSR] isotropic Gaussian kernels, sigma 0.1..1 (BSR: up to 2.4 at x2)
        return gaussian_blur(x, 0.1 + 0.9 * _rand(len(x), generator, device), kernel_size=5)

    def down_up(x):  # size shared by the batch (F.interpolate), filter chosen per example
        size = int(h * (0.625 + 0.375 * _rand(1, generator, "cpu").item()))  # 40..64 of 64
        mode = (3 * _rand(len(x), generator, "cpu")).long()
        out = x.clone()
        for i, name in enumerate(("nearest", "bilinear", "bicubic")):
            sel = mode == i
            if sel.any():
                out[sel] = resize(resize(x[sel], size, name), h, name)
        return out

    def noise(x):  # level 1..10 on the 0..255 scale (BSR: 1..25); x2 for the [-1,1] scale
        level = (1 + 9 * _rand(len(x), generator, device)) * 2 / 255
        return x + level[:, None, None, None] * randn(x.shape, generator, device)

    def compress(x):  # quality 50..95 (BSR: 30..95)
        return jpeg(x, 50 + (46 * _rand(len(x), generator, "cpu")).long())

    ops = (blur, down_up, noise, compress)
    for i in torch.randperm(len(ops), generator=generator, device=rng_device(generator, "cpu")).tolist():
        apply = _rand(B, generator, device) < 0.5
        if apply.any():
            x[apply] = ops[i](x[apply]).clamp(-1, 1)
    return x


def degrade(lo: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Conditioning augmentation by name: "blur" (stage 1) or "bsr" (stage 2)."""
    if kind == "blur":
        return blur_degrade(lo, generator)
    if kind == "bsr":
        return bsr_degrade(lo, generator)
    raise ValueError(f"unknown degradation {kind!r}; use 'blur' or 'bsr'")


def random_crop(x: torch.Tensor, size: int, generator=None) -> torch.Tensor:
    """One random size x size window per example, the same for all channels: [B,C,H,W] -> [B,C,s,s].

    Crop the target and the conditioning concatenated on channels, so both see the same region.
    """
    B, _, H, W = x.shape
    top = (_rand(B, generator, x.device) * (H - size + 1)).long()                # [B]
    left = (_rand(B, generator, x.device) * (W - size + 1)).long()
    rows = top[:, None] + torch.arange(size, device=x.device)                   # [B,s]
    cols = left[:, None] + torch.arange(size, device=x.device)
    batch = torch.arange(B, device=x.device)[:, None, None]
    crops = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]      # [B,s,s,C]
    # back to NCHW memory: on channels-last strides GroupNorm's CPU backward is ~10x slower
    return crops.permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- the model
@dataclass
class UpsamplerConfig:
    low_res: int = 32  # input size: the decoder's output (stage 1) or stage 1's output (stage 2)
    high_res: int = 64  # output size; the paper upsamples x4 (64->256->1024), the toy x2
    degradation: str = "blur"  # [unCLIP] Sec. 2.1: "blur" for stage 1, "bsr" for stage 2
    # Fraction of training inputs degraded. At test time the input is clean (a true low-res
    # image) or a decoder sample, so the net must handle both; half-and-half covers either.
    augment_prob: float = 0.5
    crop: bool = True  # [unCLIP] Table 3: train on crops of 1/4 of the area, sample at full size
    timesteps: int = 1000  # T, as in [unCLIP] Table 3
    schedule: str = "cosine"  # [unCLIP] Table 3: cosine for 64->256, linear for 256->1024
    sample_steps: int = 27  # [unCLIP] Table 3: DDIM with 27 (stage 1) and 15 (stage 2) steps
    channels: int = 16  # U-Net base width (paper: 320 and 192); 16 trains in minutes on a CPU
    channel_mults: tuple[int, ...] = (1, 2, 2)  # widths per level (paper: 1,2,3,4 and 1,1,2,2,4,4)
    num_res_blocks: int = 1  # per level (paper: 3 and 2); one keeps a 2-core CPU step fast
    dropout: float = 0.0  # paper: 0.1 for stage 1, none for stage 2; minutes of CPU do not overfit
    # What is diffused and predicted. The paper: eps of the image (mean_type="eps",
    # residual=False). In minutes of CPU that net stays poor at large t, and sampling from pure
    # noise then locks onto the noise's low frequencies instead of lo.
    # Predicting r = x_0 - up(lo) itself [SRDiff] starts at the bicubic answer (the zero-init
    # output layer gives r = 0) and only has to learn the detail bicubic misses.
    mean_type: str = "x0"  # "x0" or "eps", [DDPM] Sec. 3.2
    residual: bool = True  # diffuse r = x_0 - up(lo) instead of x_0

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)  # a checkpoint may hand back a list
        train_size = self.high_res // 2 if self.crop else self.high_res
        factor = 2 ** (len(self.channel_mults) - 1)
        if not 0 < self.low_res < self.high_res:
            raise ValueError(f"need 0 < low_res < high_res, got {self.low_res}, {self.high_res}")
        if self.high_res % 2 or train_size % factor:
            raise ValueError(f"training size {train_size} (half of high_res={self.high_res} when "
                             f"crop=True) must be a multiple of {factor} for "
                             f"{len(self.channel_mults)} U-Net levels; change high_res or "
                             "channel_mults")
        if self.degradation not in ("blur", "bsr"):
            raise ValueError(f"degradation must be 'blur' or 'bsr', got {self.degradation!r}")
        if self.mean_type not in ("x0", "eps"):
            raise ValueError(f"mean_type must be 'x0' or 'eps', got {self.mean_type!r}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if not 0 <= self.augment_prob <= 1 or not 2 <= self.sample_steps <= self.timesteps:
            raise ValueError("need 0 <= augment_prob <= 1 and 2 <= sample_steps <= timesteps")


def stage_config(stage: int, **overrides) -> UpsamplerConfig:
    """Toy defaults: stage 1 is 32->64, blur, cosine, 27 steps; stage 2 64->128, blur, linear, 15."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    # Stage 2 departs from the paper's BSR degradation [unCLIP] Sec. 2.1: its inputs here are
    # 64x64 renders or decoder samples, soft but never noisy or JPEG-blocky, and the tiny net
    # trained on BSR inputs tied bicubic on them (README, "The upsamplers"). "bsr" is the paper's.
    # A quarter of the inputs degraded, not half: the test-time input is mostly clean or soft.
    base = {} if stage == 1 else dict(low_res=64, high_res=128, degradation="blur",
                                      augment_prob=0.25, schedule="linear", sample_steps=15)
    return UpsamplerConfig(**{**base, **overrides})


class Upsampler(nn.Module):
    """P(x_0 | lo): a diffusion whose U-Net sees [x_t, up(lo)] (6 channels in, 3 out).

    The variance is fixed (β̃_t, "fixed_small"), not learned: the paper samples the upsamplers
    with DDIM [unCLIP] Table 3, and DDIM with η = 0 never uses Σ. So the loss is plain MSE
    [DDPM] Eq. 14 (on eps or x_0), and there is no L_vlb term to blow up in a small net.
    """

    def __init__(self, config: UpsamplerConfig | None = None):
        super().__init__()
        cfg = self.cfg = config if config is not None else UpsamplerConfig()
        self.net = UNet(UNetConfig(
            image_size=cfg.high_res, in_channels=6, out_channels=3, channels=cfg.channels,
            channel_mults=cfg.channel_mults, num_res_blocks=cfg.num_res_blocks,
            attention_resolutions=(), dropout=cfg.dropout, clip_dim=0, text_layers=0))
        betas = (cosine_betas if cfg.schedule == "cosine" else linear_betas)(cfg.timesteps)
        self.diffusion = GaussianDiffusion(betas, mean_type=cfg.mean_type, var_type="fixed_small")

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps or x_0 (or r) [B,3,S,S] from x_t, cond [B,3,S,S]; S need not be high_res."""
        return self.net(torch.cat([x_t, cond], dim=1), t)

    def _check(self, x: torch.Tensor, size: int, name: str) -> None:
        cfg = self.cfg
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"{name} must be [B, 3, {size}, {size}] for this "
                             f"{cfg.low_res}->{cfg.high_res} upsampler, got {tuple(x.shape)}; "
                             "resize the images or use the upsampler for that size")
        if not torch.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
            raise ValueError(f"{name} must be finite and in [-1, 1] (pixels / 127.5 - 1)")

    def loss(self, hi_res: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar training loss for a batch of clean high-res images [B,3,H,W] in [-1,1]."""
        cfg = self.cfg
        self._check(hi_res, cfg.high_res, "hi_res")
        B, device = hi_res.shape[0], hi_res.device
        # the conditioning is data, not network: made in fp32 even where the caller autocasts
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            # [B,3,h,w]: a box average, the way the Shapes views (and most pyramids) are made
            lo = resize(hi_res, cfg.low_res, "area")
            # [unCLIP] Sec. 2.1, [CDM]: corrupt a random subset of the conditioning
            bad = _rand(B, generator, device) < cfg.augment_prob
            if bad.any():
                lo[bad] = degrade(lo[bad], cfg.degradation, generator)
            cond = resize(lo, cfg.high_res)  # [B,3,H,W]
            x_0 = hi_res
            if cfg.crop:  # [unCLIP] Sec. 2.1: a quarter of the area, same window in both
                both = random_crop(torch.cat([hi_res, cond], dim=1), cfg.high_res // 2, generator)
                x_0, cond = both.chunk(2, dim=1)  # each [B,3,H/2,W/2]
            if cfg.residual:  # diffuse only what the upsampled conditioning gets wrong
                x_0 = x_0 - cond
        # t ~ Uniform{0..T-1} and eps ~ N(0, I), both from the generator so a seed fixes the loss
        t = (_rand(B, generator, device) * cfg.timesteps).long().clamp(max=cfg.timesteps - 1)
        noise = randn(x_0.shape, generator, device)
        return self.diffusion.training_losses(self, x_0, t, noise=noise, cond=cond)["loss"].mean()

    @torch.no_grad()
    def sample(self, lo_res: torch.Tensor, steps: int | None = None, eta: float | None = 0.0,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
               progress=None) -> torch.Tensor:
        """Upsample lo_res [B,3,h,w] in [-1,1] -> [B,3,H,W] in [-1,1], on the whole image.

        steps defaults to config.sample_steps (respaced [IDDPM] Sec. 4); eta=0.0 is DDIM
        [DDIM] Eq. 12, eta=None ancestral sampling. noise: optional x_T [B,3,H,W].
        """
        cfg = self.cfg
        self._check(lo_res, cfg.low_res, "lo_res")
        B, H = lo_res.shape[0], cfg.high_res
        if noise is not None and tuple(noise.shape) != (B, 3, H, H):
            raise ValueError(f"noise must be [{B}, 3, {H}, {H}], got {tuple(noise.shape)}")
        cond = resize(lo_res, H)  # [B,3,H,W]; no degradation at test time
        base = cond if cfg.residual else torch.zeros_like(cond)  # image = base + diffused variable

        def clipped(x_t, t):  # the net, its x_0 estimate clipped; t: self.diffusion's timesteps
            # Static clipping keeps the image estimate base + x̂_0 in [-1, 1]. For the residual
            # that is a per-pixel range: r itself fills [-2, 2] at hard edges. The sampler's
            # clip="static" would bound x̂_0 = r̂ by [-1, 1], so it is done here instead.
            x_0 = self.diffusion.p_mean_variance(self(x_t, t, cond), x_t, t)["pred_x0"]
            x_0 = x_0.clamp(-1 - base, 1 - base)
            return x_0 if cfg.mean_type == "x0" else self.diffusion.x0_to_eps(x_t, t, x_0)

        diffusion = self.diffusion.respace(steps if steps is not None else cfg.sample_steps)
        x = diffusion.sample(clipped, (B, 3, H, H), eta=eta, noise=noise, generator=generator,
                             clip="none", progress=progress)
        return (base + x).clamp(-1, 1)

    def save(self, path: str) -> None:
        """Write {"config", "state_dict"} atomically: a failed save never clobbers the old file."""
        tmp = f"{path}.tmp"
        torch.save({"config": asdict(self.cfg), "state_dict": self.state_dict()}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, map_location=None) -> "Upsampler":
        """Rebuild from save(); weights_only=True, so loading never runs pickled code."""
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= ckpt.keys():
            raise ValueError(f"{path} is not an Upsampler checkpoint (no config/state_dict)")
        try:
            if missing := {f.name for f in fields(UpsamplerConfig)} - set(ckpt["config"]):  # not defaults
                raise TypeError(f"missing fields {sorted(missing)}")
            model = cls(UpsamplerConfig(**ckpt["config"]))
        except TypeError as err:
            raise ValueError(f"{path}: config does not fit UpsamplerConfig ({err}); it was "
                             "saved by another model or version") from err
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not match the config stored with them; "
                             f"re-save the checkpoint from the model that made it\n{err}") from err
        if isinstance(map_location, str | torch.device):  # the model follows its weights
            model.to(map_location)
        return model
