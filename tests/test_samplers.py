"""diffusion.py's samplers (ancestral, DDIM, inversion, guidance) on Gaussian data, where the exact
denoiser (gaussian_exact.py) makes every sampled moment known in closed form."""

import math

import pytest
import torch
from gaussian_exact import AB, MU, S, assert_moments, exact_model, jump, seeded

import diffusion
from diffusion import GaussianDiffusion, cosine_betas, guide

N = 100_000


@pytest.mark.parametrize("mean_type", diffusion.MEAN_TYPES)
def test_ancestral_with_the_true_reverse_variance_samples_the_data(mean_type):
    # every step is exactly q(x_{t−1} | x_t), so even 10 respaced steps give N(MU, S²) [IDDPM] Sec. 4
    d = GaussianDiffusion(cosine_betas(1000), mean_type=mean_type).respace(10)
    x = d.sample(exact_model(mean_type, learned_in=d), (N, 1), generator=seeded(0), clip="none")
    assert_moments(x, MU, S)


def test_ancestral_fixed_variances_bracket_the_data_spread():
    # β̃_t and β_t are the lower and upper bounds of the reverse variance [DDPM] Sec. 3.2: with 10
    # steps the spread falls short with β̃_t (exactly: see the DDIM η = 1 tests) and overshoots with β_t
    model = exact_model("eps")
    spread = {}
    for var_type in ("fixed_small", "fixed_large"):
        d = GaussianDiffusion(cosine_betas(1000), var_type=var_type).respace(10)
        x = d.sample(model, (N, 1), generator=seeded(1), clip="none")
        assert abs(x.mean().item() - MU) < 4 * S / math.sqrt(N)
        spread[var_type] = x.std().item() / S
    assert 0.7 < spread["fixed_small"] < 0.8 and 1.05 < spread["fixed_large"] < 1.15


def ddim_gaussian_std(d, eta):
    """Output std of DDIM [DDIM] Eq. 12 on N(MU, S²) data from x_T ~ N(0, 1): with the exact x̂_0
    and ε̂ each step is y_{t−1} = k y_t + σ z on y_t = x_t − √ᾱ_t MU, k = (√ᾱ_{t−1}√ᾱ_t S² +
    √(1 − ᾱ_{t−1} − σ²)√(1 − ᾱ_t)) / V_t, σ² = η² β̃_t (Eq. 16). Returns (Π k, std)."""
    prod, var = 1.0, 1.0
    kept = d.timestep_map
    for k in reversed(range(len(kept))):
        t, t_prev = kept[k], kept[k - 1] if k else torch.tensor(-1)
        ab, ab_prev = AB[t], AB[t_prev] if k else torch.tensor(1.0, dtype=torch.float64)
        sigma2 = eta**2 * jump(t_prev, t)[1]
        step = (ab_prev.sqrt() * ab.sqrt() * S**2 + (1 - ab_prev - sigma2).sqrt() * (1 - ab).sqrt())
        step = step / (ab * S**2 + 1 - ab)
        prod, var = prod * step, step**2 * var + sigma2
    return prod.item(), var.sqrt().item()


def test_ddim_eta0_is_deterministic_and_follows_the_probability_flow():
    base = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small")
    noise = torch.randn(2000, 1, generator=seeded(0))
    aT = AB[-1].sqrt().item()
    for steps in (10, 250):
        d = base.respace(steps)
        x = d.sample(exact_model(), noise.shape, eta=0.0, noise=noise, clip="none", generator=seeded(1))
        again = d.sample(exact_model(), noise.shape, eta=0.0, noise=noise, clip="none",
                         generator=seeded(2))
        assert torch.equal(x, again)  # η = 0 draws no noise
        slope = ddim_gaussian_std(d, 0.0)[0]
        # float32: x̂_0 = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t at t = T−1 divides rounding errors by 5·10⁻⁵
        assert torch.allclose(x, MU + slope * (noise - aT * MU), atol=1e-3)
    # the probability-flow ODE keeps (x_t − √ᾱ_t MU)/√V_t constant [DDIM] Sec. 4.3, so x_T maps to
    # MU + S (x_T − √ᾱ_T MU)/√V_T; 250 DDIM steps are within 1% of that slope
    V_T = AB[-1].item() * S**2 + 1 - AB[-1].item()
    assert slope == pytest.approx(S / math.sqrt(V_T), rel=1e-2)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta_spread_matches_closed_form(eta):
    d = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small").respace(10)
    x = d.sample(exact_model(), (N, 1), eta=eta, generator=seeded(3), clip="none")
    assert_moments(x, MU, ddim_gaussian_std(d, eta)[1])


def test_ddim_eta1_is_ancestral_sampling_with_posterior_variance():
    # [DDIM] Eq. 16: η = 1 makes σ_t² = β̃_t, and Eq. 12's mean is then μ̃_t(x_t, x̂_0): the same
    # step as [DDPM] Algorithm 2 with β̃_t, so with the same draws both take the same path
    d = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small").respace(10)
    noise = torch.randn(5000, 1, generator=seeded(4))
    ddim = d.sample(exact_model(), noise.shape, eta=1.0, noise=noise, generator=seeded(5), clip="none")
    ddpm = d.sample(exact_model(), noise.shape, noise=noise, generator=seeded(5), clip="none")
    assert torch.allclose(ddim, ddpm, atol=2e-4)
    assert ddim.std().item() < 0.9 * S  # and the noise really is drawn (η = 0 gives 0.84 S)


def ddim_invert_affine(d):
    """ddim_invert on N(MU, S²) data in closed form: each step x_new = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂
    with ε̂ = E[ε | x_t = x] and x̂_0 = (x − √(1 − ᾱ_{t−1}) ε̂)/√ᾱ_{t−1} is affine in x.
    Returns (slope, intercept) of x_T as a function of x_0."""
    slope, intercept = 1.0, 0.0
    kept = d.timestep_map
    for k in range(len(kept)):
        ab, ab_prev = AB[kept[k]], AB[kept[k - 1]] if k else torch.tensor(1.0, dtype=torch.float64)
        e1 = (1 - ab).sqrt() / (ab * S**2 + 1 - ab)  # ε̂ = e1 (x − √ᾱ_t MU)
        g = ab.sqrt() * (1 - (1 - ab_prev).sqrt() * e1) / ab_prev.sqrt() + (1 - ab).sqrt() * e1
        c = -(ab.sqrt() * -(1 - ab_prev).sqrt() / ab_prev.sqrt() + (1 - ab).sqrt()) * e1 * ab.sqrt() * MU
        slope, intercept = g * slope, g * intercept + c
    return slope.item(), intercept.item()


def test_ddim_inversion_round_trip():
    d = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small").respace(250)
    x_0 = MU + S * torch.randn(2000, 1, generator=seeded(6))
    x_T = d.ddim_invert(exact_model(), x_0)
    slope, intercept = ddim_invert_affine(d)
    assert torch.allclose(x_T, slope * x_0 + intercept, atol=1e-3)
    # the ODE run forwards standardises the data [DDIM] Sec. 4.3: x_T ≈ (x_0 − MU)/S
    assert torch.allclose(x_T, (x_0 - MU) / S, atol=0.03)
    back = d.sample(exact_model(), x_0.shape, eta=0.0, noise=x_T, clip="none")
    assert (back - x_0).abs().max().item() < 3e-2  # both directions err O(1/steps), oppositely


def test_guided_sampling_guides_the_mean_only():
    # [CFG] Eq. 6 is linear in the mean, so guiding the exact nets of N(mu_c, S²) and N(mu_u, S²)
    # with scale w gives the exact net of N(mu_u + w (mu_c − mu_u), S²); the unconditional
    # variance output here is wrong on purpose: only the conditional one may be used
    d = GaussianDiffusion(cosine_betas(1000), var_type="learned_range").respace(10)
    cond, uncond = exact_model(mu=0.4, learned_in=d), exact_model(mu=0.1, learned_in=d)

    def guided(x_t, t):
        u = uncond(x_t, t)
        u[:, 1:] = -1.0
        return guide(cond(x_t, t), u, 2.0, learned_var=True)
    x = d.sample(guided, (N, 1), generator=seeded(7), clip="none")
    assert_moments(x, 0.1 + 2 * (0.4 - 0.1), S)


def test_guidance_scales():
    g = torch.Generator().manual_seed(2)
    c, u = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    assert torch.allclose(guide(c, u, 1.0, learned_var=True), c)
    assert torch.allclose(guide(c, u, 0.0, learned_var=False), u)
    out = guide(c, u, 3.0, learned_var=True)
    assert torch.allclose(out[:, :3], u[:, :3] + 3 * (c[:, :3] - u[:, :3]))
    assert torch.equal(out[:, 3:], c[:, 3:])  # conditional variance kept
