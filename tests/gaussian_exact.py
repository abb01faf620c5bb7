"""The exact denoiser for Gaussian data, shared by test_diffusion.py and test_samplers.py: its outputs,
sampled moments and losses are known in closed form."""

import math

import torch

from diffusion import cosine_betas

# ---------------------------------------------------------------- an exact model for Gaussian data
# For data x_0 ~ N(MU, S²) per coordinate, x_t = a x_0 + b ε (a = √ᾱ_t, b = √(1 − ᾱ_t)) is
# Gaussian with variance V = a²S² + b², and Gaussian conditioning gives the best possible net:
#     E[x_0 | x_t] = MU + a S² (x_t − a MU) / V,   E[ε | x_t] = b (x_t − a MU) / V,
#     Var[x_0 | x_t] = S² b² / V,                  E[v | x_t] = a E[ε | x_t] − b E[x_0 | x_t].
# Everything below is computed in float64 from the schedule alone, never from the module's buffers.
MU, S = 0.3, 0.5
AB = torch.cumprod(1 - cosine_betas(1000), 0)  # ᾱ_t of the 1000-step cosine schedule


def column(values, x):
    return values.reshape(-1, *([1] * (x.dim() - 1)))


def jump(t_prev, t):
    """β, β̃ and the posterior coefficient of x_0 for the step from original timestep t to t_prev
    (t_prev = −1: x_0), from ᾱ alone: [DDPM] Eqs. 6-7 for a chain that jumps t -> t_prev."""
    ab, ab_prev = AB[t], torch.where(t_prev >= 0, AB[t_prev.clamp(min=0)], torch.ones_like(AB[t]))
    beta = 1 - ab / ab_prev
    return beta, beta * (1 - ab_prev) / (1 - ab), beta * ab_prev.sqrt() / (1 - ab)


def exact_model(mean_type="eps", mu=MU, s=S, learned_in=None):
    """The exact net for N(mu, s²) data, called as the samplers call a net (original timesteps).
    learned_in: a learned_range diffusion; the net then also outputs the v of [IDDPM] Eq. 15 that
    makes Σ the true reverse variance β̃ + c_x0² Var[x_0 | x_t] (law of total variance over
    q(x_0 | x_t)), so every reverse step is exactly q(x_{t−1} | x_t)."""
    def model(x_t, t):
        ab = column(AB[t], x_t)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        V = ab * s**2 + 1 - ab
        y = x_t.double() - a * mu
        x0, eps = mu + a * s**2 * y / V, b * y / V
        out = {"eps": eps, "x0": x0, "v": a * eps - b * x0}[mean_type]
        if learned_in is not None:
            kept = learned_in.timestep_map
            k = torch.searchsorted(kept, t)
            beta, post, c0 = (column(q, x_t) for q in jump(torch.where(k > 0, kept[k - 1], -1), t))
            true_var = post + c0**2 * s**2 * b**2 / V
            v = 2 * (true_var / post).log() / (beta / post).log() - 1
            # the true reverse variance lies between β̃_t and β_t [DDPM] Sec. 3.2 (0 < s < 1);
            # at index 0 (no noise is added there) any v will do
            v = torch.where(column(k, x_t) > 0, v, torch.zeros_like(v)).expand_as(x_t)
            assert ((v > -1) & (v < 1)).all()
            out = torch.cat([out, v], dim=1)
        return out.float()
    return model


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def assert_moments(x, mean, std, n_se=4.0):
    """Sample mean and std of x equal mean and std within n_se standard errors."""
    n = x.numel()
    assert abs(x.mean().item() - mean) < n_se * std / math.sqrt(n), x.mean().item()
    assert abs(x.std().item() / std - 1) < n_se / math.sqrt(2 * n), x.std().item()


def gaussian_kl(m1, var1, m2, var2):
    """KL(N(m1, var1) ‖ N(m2, var2)) in nats."""
    return 0.5 * ((var2 / var1).log() + var1 / var2 + (m1 - m2) ** 2 / var2 - 1)
