"""diffusion.py checked against closed forms, known values and a trained 2-D toy model."""

import math

import pytest
import torch
import torch.nn as nn

import diffusion
from diffusion import (
    GaussianDiffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
    guide,
    linear_betas,
    normal_kl,
)


@pytest.fixture(scope="module")
def diff():
    return GaussianDiffusion(cosine_betas(1000), mean_type="eps", var_type="learned_range")


def test_cosine_schedule_known_values(diff):
    betas = cosine_betas(1000)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(4.1284e-5, rel=1e-4)
    assert diff._alpha_bar64[499].item() == pytest.approx(0.49384, rel=1e-4)
    assert diff._alpha_bar64[999].item() == pytest.approx(2.43e-9, rel=1e-2)
    assert diff.posterior_var[1].item() == pytest.approx(2.1789e-5, rel=1e-4)
    assert betas.max().item() <= 0.999 and (betas[1:] >= betas[:-1]).all()  # monotone, clipped


def test_linear_schedule_endpoints():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert linear_betas(500)[-1].item() == pytest.approx(0.04)  # rescaled for shorter T


def test_respacing_keeps_base_alpha_bar(diff):
    r = diff.respace(25)
    kept = r.timestep_map.tolist()
    assert kept[:4] == [0, 42, 83, 125] and kept[-2:] == [957, 999] and len(kept) == 25
    assert torch.allclose(r.alpha_bar, diff.alpha_bar[r.timestep_map], rtol=1e-6, atol=0)
    # β' recomputed from ᾱ, not copied from the skipped base steps
    assert r.betas[1].item() > diff.betas[42].item() * 10
    assert r.var_type == diff.var_type and r.num_timesteps == 25
    rr = r.respace(5)  # respacing a respaced diffusion maps back to original timesteps
    assert rr.timestep_map.tolist() == [kept[i] for i in (0, 6, 12, 18, 24)]
    assert torch.allclose(rr.alpha_bar, diff.alpha_bar[rr.timestep_map], rtol=1e-6)
    for bad in (1, 1001):
        with pytest.raises(ValueError, match="steps"):
            diff.respace(bad)


def test_q_sample_moments(diff):
    g = torch.Generator().manual_seed(0)
    x_0 = torch.tensor([0.7, -0.3]).repeat(200_000, 1)
    t = torch.full((len(x_0),), 300, dtype=torch.long)
    x_t = diff.q_sample(x_0, t, torch.randn(x_0.shape, generator=g))
    ab = diff._alpha_bar64[300].item()
    assert torch.allclose(x_t.mean(0), math.sqrt(ab) * x_0[0], atol=5e-3)
    assert torch.allclose(x_t.var(0), torch.full((2,), 1 - ab), rtol=1e-2)


def test_posterior_matches_bayes_rule(diff):
    # q(x_{t−1}|x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}), q(x_t|x_{t−1}) = N(√α_t x_{t−1}, β_t)
    # multiplied as Gaussians in x_{t−1}, in float64 from the schedule alone
    betas = cosine_betas(1000)
    ab = torch.cumprod(1 - betas, 0)
    x_0, x_t = torch.tensor([[0.5]]), torch.tensor([[-1.2]])
    for step in (1, 10, 500, 999):
        prec = 1 / (1 - ab[step - 1]) + (1 - betas[step]) / betas[step]
        var = 1 / prec
        mean = var * (ab[step - 1].sqrt() * 0.5 / (1 - ab[step - 1])
                      + (1 - betas[step]).sqrt() * -1.2 / betas[step])
        m, v, log_v = diff.q_posterior(x_0, x_t, torch.tensor([step]))
        assert m.item() == pytest.approx(mean.item(), rel=1e-4, abs=1e-6)
        assert v.item() == pytest.approx(var.item(), rel=1e-4)
        assert log_v.item() == pytest.approx(math.log(var.item()), rel=1e-4)
    # t = 0: variance 0, log clipped to log β̃_1
    _, v0, log_v0 = diff.q_posterior(x_0, x_t, torch.tensor([0]))
    assert v0.item() == 0 and log_v0.item() == pytest.approx(math.log(2.1789e-5), rel=1e-4)


def test_normal_kl_closed_form():
    m1, lv1 = torch.tensor([0.3, -1.0]), torch.tensor([-1.0, 0.5])
    m2, lv2 = torch.tensor([0.0, 2.0]), torch.tensor([0.2, -0.3])
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(2), atol=1e-7)
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))


def test_discretized_likelihood_sums_to_one():
    bins = torch.linspace(-1, 1, 256)  # the 256 values of 8-bit data
    for mean, log_var in ((0.1, -3.0), (-0.9, -6.0), (0.99, 0.0)):
        ll = discretized_gaussian_log_likelihood(bins, torch.tensor(mean), torch.tensor(log_var))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_eps_x0_conversions_round_trip(diff):
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 990])
    x_0 = diff.eps_to_x0(x_t, t, eps)
    assert torch.allclose(diff.x0_to_eps(x_t, t, x_0), eps, atol=1e-3)
    # and q_sample inverted: x_t built from (x_0, ε) gives back x_0
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    assert torch.allclose(diff.eps_to_x0(diff.q_sample(x0, t, eps), t, eps), x0, atol=1e-3)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_each_parameterisation_recovers_x0_and_zero_loss(mean_type):
    """A net that outputs the exact target of its mean_type has zero mse and predicts x_0."""
    d = GaussianDiffusion(cosine_betas(100), mean_type=mean_type, var_type="fixed_small")
    g = torch.Generator().manual_seed(3)
    x_0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    a, b = d.sqrt_alpha_bar[t].view(-1, 1, 1, 1), d.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    target = {"eps": eps, "x0": x_0, "v": a * eps - b * x_0}[mean_type]  # v: [PD] Sec. 4
    x_t = d.q_sample(x_0, t, eps)
    p = d.p_mean_variance(target, x_t, t)
    assert torch.allclose(p["pred_x0"], x_0, atol=1e-3) and torch.allclose(p["pred_eps"], eps, atol=2e-2)
    terms = d.training_losses(lambda x, s: target, x_0, t, noise=eps)
    assert terms["mse"].max().item() < 1e-10
    wrong = d.training_losses(lambda x, s: torch.zeros_like(x), x_0, t, noise=eps)
    assert wrong["mse"].min().item() > 0.01


def test_learned_range_endpoints(diff):
    x_t, t = torch.zeros(3, 2), torch.tensor([1, 200, 999])
    for v, table in ((1.0, diff.log_betas), (-1.0, diff.posterior_log_var)):
        out = torch.cat([torch.zeros(3, 2), torch.full((3, 2), v)], dim=1)
        log_var = diff.p_mean_variance(out, x_t, t)["log_var"]
        assert torch.allclose(log_var, table[t][:, None].expand(3, 2))


def test_guidance_scales():
    g = torch.Generator().manual_seed(2)
    c, u = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    assert torch.allclose(guide(c, u, 1.0, learned_var=True), c)
    assert torch.allclose(guide(c, u, 0.0, learned_var=False), u)
    out = guide(c, u, 3.0, learned_var=True)
    assert torch.allclose(out[:, :3], u[:, :3] + 3 * (c[:, :3] - u[:, :3]))
    assert torch.equal(out[:, 3:], c[:, 3:])  # conditional variance kept


def test_hybrid_loss_stops_gradient_and_stays_finite():
    diff = GaussianDiffusion(cosine_betas(2000), var_type="learned_range")
    x_0 = torch.rand(8, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 1, 5, 100, 1000, 1500, 1998, 1999])
    raw = (torch.randn(8, 6, 4, 4) * 1e4).requires_grad_()  # absurd outputs: a fresh small net
    losses = diff.training_losses(lambda x, tt: raw, x_0, t)
    assert all(torch.isfinite(v).all() for v in losses.values())
    losses["vb"].sum().backward()
    assert (raw.grad[:, :3] == 0).all()  # L_vlb does not train the mean
    assert torch.isfinite(raw.grad).all()
    # vb weighted by T/1000 = 2 relative to L_t
    out = torch.zeros(8, 6, 4, 4)
    noise = torch.randn(8, 3, 4, 4)
    vb = diff.training_losses(lambda x, tt: out, x_0, t, noise=noise)["vb"]
    ref = diff.vb_term(out, x_0, diff.q_sample(x_0, t, noise), t)
    assert torch.allclose(vb, 2 * ref)


def test_bad_input_errors(diff):
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="timesteps"):
        diff.q_sample(x, torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="int64"):
        diff.q_sample(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        diff.training_losses(lambda x_t, t: torch.zeros(2, 3, 4, 4), x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="mean_type"):
        GaussianDiffusion(cosine_betas(10), mean_type="velocity")
    with pytest.raises(ValueError, match="clip"):
        diff.p_mean_variance(torch.zeros(2, 6, 4, 4), x, torch.tensor([1, 2]), clip="soft")


def gaussian_eps_model(base: GaussianDiffusion, mu: float, s: float):
    """The exact E[ε | x_t] for data x_0 ~ N(mu, s²): linear in x_t. Uses the ORIGINAL timestep."""
    def model(x_t, t):
        ab = base.alpha_bar[t].reshape(-1, *([1] * (x_t.dim() - 1)))
        return (1 - ab).sqrt() / (ab * s**2 + 1 - ab) * (x_t - ab.sqrt() * mu)
    return model


def test_ancestral_sampler_matches_gaussian_data():
    # with the exact ε-model the sampler must reproduce N(mu, s²); a sampler that scales the
    # noise by the variance instead of the standard deviation gives far too small a spread,
    # and one that passes respaced indices instead of original timesteps a wrong one
    base = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small")
    model = gaussian_eps_model(base, mu=0.3, s=0.5)
    x = base.respace(100).sample(model, (20_000, 1), generator=torch.Generator().manual_seed(0),
                                 clip="none")
    assert x.mean().item() == pytest.approx(0.3, abs=0.02)
    assert x.std().item() == pytest.approx(0.5, rel=0.06)


def test_ddim_deterministic_and_inversion_round_trip():
    base = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small")
    model = gaussian_eps_model(base, mu=0.0, s=0.5)
    d = base.respace(200)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = d.sample(model, noise.shape, eta=0.0, noise=noise, clip="none",
                 generator=torch.Generator().manual_seed(1))
    b = d.sample(model, noise.shape, eta=0.0, noise=noise, clip="none",
                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)  # η = 0 draws no noise
    x_0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)) * 0.5
    x_T = d.ddim_invert(model, x_0)
    assert (x_T - x_0).abs().mean() > 0.3  # inversion really moved to noise
    back = d.sample(model, x_0.shape, eta=0.0, noise=x_T, clip="none")
    assert (back - x_0).abs().max().item() < 2e-2
    # with η = 1 two generators give different samples
    c = d.sample(model, noise.shape, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(a, c)


MODES = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * 0.6
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


class TinyDenoiser(nn.Module):
    def __init__(self, width=128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t):
        freqs = torch.exp(-math.log(1000) * torch.arange(8) / 8)
        angles = t[:, None].float() * freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def test_trained_toy_model_samples_the_mixture():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    diff = GaussianDiffusion(cosine_betas(1000), mean_type="eps", var_type="fixed_small")
    net = TinyDenoiser()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1500)
    for _ in range(1500):
        k = torch.multinomial(WEIGHTS, 256, replacement=True, generator=g)
        x_0 = MODES[k] + 0.05 * torch.randn(256, 2, generator=g)
        t = torch.randint(0, 1000, (256,), generator=g)
        loss = diff.training_losses(net, x_0, t)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def check(x):
        dist = torch.cdist(x, MODES)
        near, idx = dist.min(1)
        assert (near < 0.25).float().mean() > 0.85
        frac = torch.bincount(idx[near < 0.25], minlength=3).float() / (near < 0.25).sum()
        assert torch.allclose(frac, WEIGHTS, atol=0.08), frac

    # the data lies in [−1, 1], so x̂_0 is clipped there as for images: near t = T−1 the
    # ε -> x_0 conversion multiplies the net's error by 1/√ᾱ ≈ 2·10⁴
    with torch.no_grad():
        untrained = TinyDenoiser()
        bad = diff.respace(50).sample(untrained, (2000, 2), eta=0.0,
                                      generator=torch.Generator().manual_seed(5))
        with pytest.raises(AssertionError):
            check(bad)  # the statistic does tell an untrained model apart
        check(diff.respace(250).sample(net, (2000, 2),
                                       generator=torch.Generator().manual_seed(6)))
        check(diff.respace(50).sample(net, (2000, 2), eta=0.0,
                                      generator=torch.Generator().manual_seed(7)))


def test_per_example_generators_make_batching_irrelevant():
    base = GaussianDiffusion(cosine_betas(1000), var_type="fixed_small")
    d, model = base.respace(10), gaussian_eps_model(base, mu=0.0, s=0.5)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    both = d.sample(model, (2, 3), generator=gens([4, 5]), clip="none")
    alone = d.sample(model, (1, 3), generator=gens([5]), clip="none")
    assert torch.equal(both[1:], alone)
    assert not torch.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="generators"):
        d.sample(model, (3, 3), generator=gens([1, 2]))


def test_autocast_precision_choices():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with diffusion.autocast("cpu", "fp32"):
        assert (x @ w).dtype == torch.float32
    with diffusion.autocast("cpu", "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with diffusion.autocast("cpu", "auto"):  # bf16 only where the CPU computes it natively
        assert (x @ w).dtype == (torch.bfloat16 if diffusion.cpu_has_native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="precision"):
        diffusion.autocast("cpu", "fp16")
