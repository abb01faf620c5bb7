"""Gaussian diffusion: the math shared by the prior, the decoder and the upsamplers.

The network is always an argument (`model(x_t, t, **cond) -> output`); this module holds only
the schedule, the forward process, the reverse-process parameterisation, the losses and the
samplers. It imports nothing from the project, so it can be copied on its own.

Symbols (paper -> code):
    T                       num_timesteps
    β_t                     betas
    ᾱ_t = Π_{s≤t} (1 − β_s) alpha_bar           ([DDIM] writes this α_t; we always write ᾱ)
    x_0, x_t, ε             x_0, x_t, eps
    β̃_t                     posterior_var       variance of q(x_{t−1} | x_t, x_0)
    μ̃_t(x_t, x_0)           coef_x0 · x_0 + coef_xt · x_t
    Σ_θ, v                  the learned variance and the raw net output that interpolates it

Timestep convention: t is an int64 index in [0, T). Index 0 is one step of noise
(ᾱ_0 = 1 − β_0 ≈ 1); sampling runs t = T−1 … 0 and the step at t = 0 returns x_0 itself.
Every function works on any shape [B, ...]: images [B, C, H, W] and vectors [B, D] alike.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# What the net predicts: the noise ε, x_0 itself (prior), or v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 [PD]
# Sec. 4, which is −x_0 at high noise and ε at low noise (the toy decoder)
MEAN_TYPES = ("eps", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
CLIP_MODES = ("none", "static", "dynamic")  # how predicted x_0 is kept inside the data range


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """[IDDPM] Eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2); float64 [T]."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    # [IDDPM] Sec. 3.2: β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped so the last steps are not singular
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def linear_betas(T: int) -> Tensor:
    """[DDPM] Sec. 4: β from 1e-4 to 0.02 over 1000 steps, rescaled for other T as [IDDPM] does."""
    scale = 1000 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)


def guide(out_cond: Tensor, out_uncond: Tensor, scale: float, learned_var: bool) -> Tensor:
    """Classifier-free guidance on a batch of net outputs (both halves from one forward).

    [CFG] Eq. 6, [GLIDE] Sec. 2.3: ε̂ = ε(∅) + s·(ε(c) − ε(∅)). With a learned variance only
    the mean channels (first half of dim 1) are guided; the conditional variance is kept.
    Scale 1 is the conditional output, 0 the unconditional one. Linear, so it also applies
    to an x_0-predicting net (the prior).
    """
    if out_cond.shape != out_uncond.shape:
        raise ValueError(f"guide: shapes differ, {tuple(out_cond.shape)} vs {tuple(out_uncond.shape)}")
    if not learned_var:
        return out_uncond + scale * (out_cond - out_uncond)
    mean_c, var_c = out_cond.chunk(2, dim=1)
    mean_u = out_uncond.chunk(2, dim=1)[0]
    return torch.cat([mean_u + scale * (mean_c - mean_u), var_c], dim=1)


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)) elementwise, in nats."""
    return 0.5 * (log_var2 - log_var1 - 1 + (log_var1 - log_var2).exp()
                  + (mean1 - mean2) ** 2 * (-log_var2).exp())


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """[DDPM] Eq. 13: log-probability of 8-bit data x ∈ [−1, 1] (bins of width 2/255) under
    N(mean, e^log_var); the edge bins extend to ±∞. Elementwise, in nats."""
    inv_std = (-0.5 * log_var).exp()
    cdf_hi = torch.special.ndtr(inv_std * (x - mean + 1 / 255))
    cdf_lo = torch.special.ndtr(inv_std * (x - mean - 1 / 255))
    tiny = 1e-12  # keeps log finite when a bin's mass underflows
    return torch.where(x < -0.999, cdf_hi.clamp(min=tiny).log(),
                       torch.where(x > 0.999, (1 - cdf_lo).clamp(min=tiny).log(),
                                   (cdf_hi - cdf_lo).clamp(min=tiny).log()))


def _at(a: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """a[t] as [B, 1, ..., 1] so it broadcasts against x of shape [B, ...]."""
    return a[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def _clamp_straight_through(x: Tensor, lo: float, hi: float) -> Tensor:
    """x.clamp(lo, hi) in value, with the gradient of the identity (1 everywhere)."""
    if not x.requires_grad:  # sampling: a plain clamp
        return x.clamp(lo, hi)
    return x.clamp(lo, hi).detach() + (x - x.detach())


def _mean_flat(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def rng_device(generator, device):
    """Where to draw random numbers: on the generator's own device, then moved, so that one CPU
    seed gives the same draws whatever device the model is on; without a generator, `device`."""
    return generator.device if generator is not None else device


def randn(shape, generator, device) -> Tensor:
    """Standard normal noise on `device`, drawn where rng_device says. A list of generators draws
    row b from generator[b]: each example's noise then depends only on its own seed, and batching
    changes nothing."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([randn((1, *shape[1:]), g, device) for g in generator])
    return torch.randn(shape, generator=generator, device=rng_device(generator, device)).to(device)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps [B] -> [B, dim], the Transformer's position
    encoding applied to t ([DDPM] Appendix B); the decoder and the prior both read t through it."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # [B, dim/2]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """True where oneDNN computes bf16 in hardware (AVX512-BF16 or AMX). Elsewhere a bf16 matmul
    is emulated and many times slower than fp32, so `auto` keeps fp32 there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device, precision: str = "auto"):
    """The context the networks run in: bf16 autocast (fp32 master weights; losses and schedules
    stay fp32/fp64 because they are computed outside the network call) on CUDA and on CPUs with
    native bf16 when precision is "auto", always with "bf16", never with "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "auto":
        on = device_type == "cuda" or (device_type == "cpu" and cpu_has_native_bf16())
    else:
        on = precision == "bf16"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=on and device_type in ("cpu", "cuda"))


def autocast_network(module: nn.Module, device, precision: str) -> list:
    """Hooks that run module's forward under diffusion.autocast and hand its output on in fp32: what a
    loss does around its network (conditioning, noising, the loss itself) stays in fp32."""
    entered = []

    def enter(m, args):
        entered.append(autocast(device, precision))
        entered[-1].__enter__()

    def leave(m, args, out):  # also when forward raises (out None): autocast must not stay on
        entered.pop().__exit__(None, None, None)
        return None if out is None else out.float()
    return [module.register_forward_pre_hook(enter), module.register_forward_hook(leave, always_call=True)]


def attention(q, k, v, mask=None, causal: bool = False):
    """softmax(q k^T / sqrt(hs) + mask) v for q [B, nh, S, hs], k, v [B, nh, S', hs]; mask bool, True =
    attend, broadcast to [B, nh, S, S'] (or causal), every query seeing a key. F.scaled_dot_product_attention,
    except under bf16 autocast on a CPU, where the fused kernel is 2-4x slower than the plain product at
    5-120 tokens; its softmax stays bf16 (the kernel sums in fp32), as an fp32 round trip costs more."""
    if mask is not None and causal:
        raise ValueError("pass a mask or causal=True, not both")
    if not (q.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    w = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, nh, S, S'] in bf16
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril() if causal else mask
    # all-True masks nothing; compiling, mask.all() would break the graph
    if mask is not None and (torch.compiler.is_compiling() or not mask.all()):
        w.masked_fill_(~mask, float("-inf"))
    return w.softmax(-1) @ v


class GaussianDiffusion(nn.Module):
    """A T-step Gaussian diffusion [DDPM] with the [IDDPM] reverse-process options.

    Schedules are computed in float64 and kept as float32 buffers (non-persistent: they are
    derived from the config, not learned, and move with `.to(device)`). `timestep_map[k]` is
    the original timestep of index k, so a respaced diffusion calls the net with the timesteps
    it was trained on.
    """

    def __init__(self, betas: Tensor, mean_type: str = "eps", var_type: str = "learned_range",
                 timestep_map: Tensor | None = None):
        super().__init__()
        if mean_type not in MEAN_TYPES:
            raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 2 or not ((betas > 0) & (betas < 1)).all():  # β = 1: ᾱ = 0
            raise ValueError("betas must be a 1-D tensor of at least 2 values in (0, 1) (linear_betas: T>20)")
        self.mean_type, self.var_type = mean_type, var_type
        self.num_timesteps = T = len(betas)

        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        self._alpha_bar64 = alpha_bar  # float64 copy on the CPU, for exact respacing
        # [DDPM] Eq. 7: q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I)
        posterior_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        # β̃_0 = 0, so its log is clipped with β̃_1 at t = 0 [IDDPM] Sec. 3.1
        posterior_log_var = torch.cat([posterior_var[1:2], posterior_var[1:]]).log()
        # "fixed_large" uses β_t, with β̃_1 at t = 0 for a finite log-likelihood [IDDPM]
        large_var = torch.cat([posterior_var[1:2], betas[1:]])
        buffers = {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "sqrt_recip_alpha_bar": (1 / alpha_bar).sqrt(),
            "sqrt_recipm1_alpha_bar": (1 / alpha_bar - 1).sqrt(),
            "posterior_var": posterior_var,
            "posterior_log_var": posterior_log_var,
            # [DDPM] Eq. 7: μ̃_t = coef_x0 · x_0 + coef_xt · x_t
            "coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "coef_xt": (1 - alpha_bar_prev) * (1 - betas).sqrt() / (1 - alpha_bar),
            "large_var": large_var,
            "large_log_var": large_var.log(),
            "log_betas": betas.log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)
        if timestep_map is None:
            timestep_map = torch.arange(T)
        self.register_buffer("timestep_map", torch.as_tensor(timestep_map).long(), persistent=False)

    # ---------------------------------------------------------------- checks and respacing
    def _check_t(self, t: Tensor, x: Tensor) -> None:
        if t.dtype != torch.long or t.shape != (x.shape[0],):
            raise ValueError(f"t must be int64 of shape [B]=({x.shape[0]},), got {t.dtype} "
                             f"{tuple(t.shape)}")
        # the range check needs a device->host sync, so it runs only where it is free (CPU)
        if t.device.type == "cpu" and len(t) and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps}), got "
                             f"[{int(t.min())}, {int(t.max())}]")

    def _check_out(self, out: Tensor, x_t: Tensor) -> None:
        channels = x_t.shape[1] * (2 if self.var_type == "learned_range" else 1)
        expected = (x_t.shape[0], channels, *x_t.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(f"model output has shape {tuple(out.shape)}, expected {expected} "
                             f"(mean_type={self.mean_type}, var_type={self.var_type})")

    def respace(self, steps: int) -> "GaussianDiffusion":
        """A `steps`-step diffusion on a subset of this one's timesteps [IDDPM] Sec. 4.

        Keeps `steps` evenly spaced indices including 0 and T−1 and recomputes
        β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}}, so the kept steps have exactly the base ᾱ.
        """
        T = self.num_timesteps
        if not 2 <= steps <= T:
            raise ValueError(f"steps must be in [2, {T}], got {steps}")
        kept = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()
        alpha_bar = self._alpha_bar64[kept]
        betas = 1 - alpha_bar / torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        new = GaussianDiffusion(betas, self.mean_type, self.var_type,
                                timestep_map=self.timestep_map.cpu()[kept])
        return new.to(self.betas.device)

    # ---------------------------------------------------------------- forward process
    def q_sample(self, x_0: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """[DDPM] Eq. 4: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        self._check_t(t, x_0)
        noise = torch.randn_like(x_0) if noise is None else noise
        return _at(self.sqrt_alpha_bar, t, x_0) * x_0 + _at(self.sqrt_one_minus_alpha_bar, t, x_0) * noise

    def q_posterior(self, x_0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[DDPM] Eqs. 6-7: mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = _at(self.coef_x0, t, x_t) * x_0 + _at(self.coef_xt, t, x_t) * x_t
        return mean, _at(self.posterior_var, t, x_t), _at(self.posterior_log_var, t, x_t)

    def eps_to_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """[DDPM] Eq. 4 solved for x_0: x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
        return _at(self.sqrt_recip_alpha_bar, t, x_t) * x_t - _at(self.sqrt_recipm1_alpha_bar, t, x_t) * eps

    def x0_to_eps(self, x_t: Tensor, t: Tensor, x_0: Tensor) -> Tensor:
        """The inverse of eps_to_x0."""
        return (_at(self.sqrt_recip_alpha_bar, t, x_t) * x_t - x_0) / _at(self.sqrt_recipm1_alpha_bar, t, x_t)

    # ---------------------------------------------------------------- reverse process
    def p_mean_variance(self, model_out: Tensor, x_t: Tensor, t: Tensor, clip: str = "none") -> dict:
        """p_θ(x_{t−1} | x_t) from a net output: dict(mean, var, log_var, pred_x0, pred_eps)."""
        self._check_out(model_out, x_t)
        if clip not in CLIP_MODES:
            raise ValueError(f"clip must be one of {CLIP_MODES}, got {clip!r}")
        if self.var_type == "learned_range":
            out, v = model_out.chunk(2, dim=1)
            # [IDDPM] Eq. 15: log Σ = frac·log β_t + (1 − frac)·log β̃_t with frac = (v + 1)/2.
            # [IDDPM] Sec. 3.1 leaves v unconstrained; here its value is clamped to [−1, 1] so Σ
            # stays between β̃_t and β_t (an extrapolated log Σ overflows exp() in the KL: NaN in
            # small nets), but straight through: the loss's gradient at the clamped value reaches
            # v unchanged, so a v past ±1 still learns (back toward the range when the best Σ lies
            # inside it) instead of getting no gradient at all.
            frac = (_clamp_straight_through(v, -1, 1) + 1) / 2
            log_var = frac * _at(self.log_betas, t, x_t) + (1 - frac) * _at(self.posterior_log_var, t, x_t)
            var = log_var.exp()
        else:
            out = model_out
            small = self.var_type == "fixed_small"
            var = _at(self.posterior_var if small else self.large_var, t, x_t).expand_as(x_t)
            log_var = _at(self.posterior_log_var if small else self.large_log_var, t, x_t).expand_as(x_t)

        if self.mean_type == "eps":
            pred_x0 = self.eps_to_x0(x_t, t, out)
        elif self.mean_type == "v":  # [PD] Sec. 4: x_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v
            a, b = _at(self.sqrt_alpha_bar, t, x_t), _at(self.sqrt_one_minus_alpha_bar, t, x_t)
            pred_x0 = a * x_t - b * out
        else:
            pred_x0 = out
        if clip == "static":
            pred_x0 = pred_x0.clamp(-1, 1)
        elif clip == "dynamic":
            # [Imagen] Sec. 2.3: per sample, s = the 99.5th percentile of |x_0| (at least 1);
            # clamp to [−s, s] and divide by s
            s = torch.quantile(pred_x0.flatten(1).abs().float(), 0.995, dim=1).clamp(min=1)
            s = s.to(pred_x0.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
            pred_x0 = pred_x0.clamp(-s, s) / s
        # ε consistent with the (possibly clipped) x_0, as DDIM needs [DDIM] Eq. 12
        pred_eps = self.x0_to_eps(x_t, t, pred_x0)
        mean = self.q_posterior(pred_x0, x_t, t)[0]
        return {"mean": mean, "var": var, "log_var": log_var, "pred_x0": pred_x0, "pred_eps": pred_eps}

    # ---------------------------------------------------------------- losses
    def vb_term(self, model_out: Tensor, x_0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """[IDDPM] Eqs. 4-6: L_t = KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) in bits per
        dimension, and L_0 = −log p_θ(x_0|x_1) (discretized, for 8-bit data in [−1, 1]). [B]"""
        true_mean, _, true_log_var = self.q_posterior(x_0, x_t, t)
        p = self.p_mean_variance(model_out, x_t, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_var"]))
        nll = -_mean_flat(discretized_gaussian_log_likelihood(x_0, p["mean"], p["log_var"]))
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def training_losses(self, model, x_0: Tensor, t: Tensor, noise: Tensor | None = None,
                        **model_kwargs) -> dict:
        """Per-example losses [B] for one draw of t: dict(loss, mse, vb).

        mse is [DDPM] Eq. 14's L_simple (target ε, x_0 or v by mean_type). Measured as x_0
        errors, the ε MSE weighs them by SNR_t = ᾱ_t / (1 − ᾱ_t), the v MSE by 1 + SNR_t and the
        x_0 MSE by 1: fine detail (low noise) counts most for ε, layout (high noise) for x_0,
        and v keeps both. With learned variance the loss is [IDDPM]'s hybrid L_simple + λ·L_vlb,
        λ = 0.001 and L_vlb = T·E_t[L_t], i.e. per sampled t the vb term weighs T/1000; L_vlb
        trains only Σ (the mean is detached).
        """
        self._check_t(t, x_0)
        noise = torch.randn_like(x_0) if noise is None else noise
        x_t = self.q_sample(x_0, t, noise)
        model_out = model(x_t, self.timestep_map[t], **model_kwargs)
        self._check_out(model_out, x_t)
        learned = self.var_type == "learned_range"
        out = model_out.chunk(2, dim=1)[0] if learned else model_out
        if self.mean_type == "v":  # [PD] Sec. 4 (their α_t, σ_t are √ᾱ_t, √(1 − ᾱ_t))
            a, b = _at(self.sqrt_alpha_bar, t, x_0), _at(self.sqrt_one_minus_alpha_bar, t, x_0)
            target = a * noise - b * x_0
        else:
            target = noise if self.mean_type == "eps" else x_0
        mse = _mean_flat((target - out) ** 2)
        vb = torch.zeros_like(mse)
        if learned:
            # stop-gradient through the mean [IDDPM] Sec. 3.1
            frozen = torch.cat([out.detach(), model_out.chunk(2, dim=1)[1]], dim=1)
            vb = self.vb_term(frozen, x_0, x_t, t) * (self.num_timesteps / 1000)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    @torch.no_grad()
    def nll_bits_per_dim(self, model, x_0: Tensor, stride: int = 1, generator: torch.Generator | None = None,
                         **model_kwargs) -> Tensor:
        """[DDPM] Eq. 5, [IDDPM] Eqs. 4-6: the variational bound on −log p_θ(x_0) in bits per
        dimension, [B]: KL(q(x_T|x_0) ‖ N(0, I)) + L_0 + Σ_{t≥1} L_t, the measure of [IDDPM]
        Tables 1-2. stride k > 1 keeps L_0 and one t in k (a random offset), each weighed k: an
        unbiased estimate at 1/k of the cost. No clipping of x̂_0; the un-respaced diffusion only."""
        T, B, device = self.num_timesteps, x_0.shape[0], x_0.device
        if not 1 <= stride < T:
            raise ValueError(f"stride must be in [1, {T - 1}], got {stride}")
        if not torch.equal(self.timestep_map.cpu(), torch.arange(T)):
            raise ValueError("nll_bits_per_dim needs the diffusion the model was trained with, "
                             "not a respaced one")
        a_T = self.alpha_bar[-1]
        zero = torch.zeros_like(x_0)
        total = _mean_flat(normal_kl(a_T.sqrt() * x_0, (1 - a_T).log().expand_as(x_0), zero, zero))
        total = total / math.log(2.0)
        offset = int(torch.randint(stride, (1,), generator=generator))
        for k, weight in [(0, 1)] + [(k, stride) for k in range(1 + offset, T, stride)]:
            t = torch.full((B,), k, device=device, dtype=torch.long)
            x_t = self.q_sample(x_0, t, randn(x_0.shape, generator, device))
            out = model(x_t, self.timestep_map[t], **model_kwargs)
            total = total + weight * self.vb_term(out, x_0, x_t, t)
        return total

    # ---------------------------------------------------------------- samplers
    @torch.no_grad()
    def sample(self, model, shape, eta: float | None = None, noise: Tensor | None = None,
               generator=None, clip: str = "static", progress=None,
               **model_kwargs) -> Tensor:
        """Run the reverse process from x_T (given `noise`, or drawn) to x_0.

        eta=None: ancestral sampling [DDPM] Algorithm 2 with this diffusion's variance.
        eta=float: DDIM [DDIM] Eq. 12 (η = 0 deterministic, η = 1 DDPM-like noise).
        generator: a torch.Generator, or a list of one per example (see randn).
        progress(i, n) is called after each of the n steps.
        """
        device = self.betas.device
        x = randn(shape, generator, device) if noise is None else noise.to(device)
        n = self.num_timesteps
        for i in reversed(range(n)):
            t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
            p = self.p_mean_variance(model(x, self.timestep_map[t], **model_kwargs), x, t, clip)
            z = randn(x.shape, generator, device) if i > 0 else torch.zeros_like(x)
            if eta is None:
                # [DDPM] Algorithm 2 line 4: x_{t−1} = μ_θ + σ_t z, σ_t the standard deviation
                x = p["mean"] + (0.5 * p["log_var"]).exp() * z
            else:
                ab, ab_prev = _at(self.alpha_bar, t, x), _at(self.alpha_bar_prev, t, x)
                # [DDIM] Eq. 16: σ_t(η) = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})
                sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
                # [DDIM] Eq. 12: x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ²) ε̂ + σ z
                x = (ab_prev.sqrt() * p["pred_x0"]
                     + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * p["pred_eps"] + sigma * z)
            if progress is not None:
                progress(n - i, n)
        return x

    @torch.no_grad()
    def ddim_invert(self, model, x_0: Tensor, clip: str = "none", progress=None,
                    **model_kwargs) -> Tensor:
        """Deterministic DDIM inversion x_0 -> x_T [DDIM] Sec. 4.3: the η = 0 update run
        forwards, with ε̂ evaluated at the current x (the usual first-order approximation).
        sample(eta=0, noise=ddim_invert(x_0)) recovers x_0 up to discretisation error."""
        x = x_0
        n = self.num_timesteps
        for i in range(n):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            eps = self.p_mean_variance(model(x, self.timestep_map[t], **model_kwargs), x, t, clip)["pred_eps"]
            ab, ab_prev = _at(self.alpha_bar, t, x), _at(self.alpha_bar_prev, t, x)
            x0_hat = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()  # x sits at level ᾱ_{t−1}
            x = ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps
            if progress is not None:
                progress(i + 1, n)
        return x
