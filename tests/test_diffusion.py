"""diffusion.py checked against closed forms, known values and a trained 2-D toy model.

The losses and variances are checked with the exact model for Gaussian data (gaussian_exact.py),
whose outputs and losses are known in closed form; the samplers are test_samplers.py's."""

import math

import pytest
import torch
import torch.nn as nn
from gaussian_exact import AB, column, exact_model, gaussian_kl, jump, seeded

import diffusion
from diffusion import (
    GaussianDiffusion,
    cosine_betas,
    discretized_gaussian_log_likelihood,
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
    assert linear_betas(20)[-1].item() == pytest.approx(1.0)  # β_T = 1: ᾱ_T = 0, x_T carries no x_0
    for T in (20, 10):  # so a diffusion refuses it (sampling would divide by √ᾱ_T = 0)
        with pytest.raises(ValueError, match=r"\(0, 1\).*T>20"):
            GaussianDiffusion(linear_betas(T))


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


@pytest.mark.parametrize("var_type", diffusion.VAR_TYPES)
def test_variance_tables(var_type):
    # [DDPM] Sec. 3.2: σ² = β̃_t or β_t, with β̃_1 at t = 0 where β̃_0 = 0 [IDDPM] Sec. 3.1;
    # [IDDPM] Eq. 15 at v = −1, 0, 1: β̃_t, √(β_t β̃_t), β_t
    d = GaussianDiffusion(cosine_betas(1000), var_type=var_type)
    t = torch.tensor([0, 1, 2, 500, 999])
    beta, post, _ = jump(t - 1, t)
    post = torch.where(t == 0, jump(torch.tensor(0), torch.tensor(1))[1], post)
    x_t = torch.zeros(5, 2)
    for v in (-1.0, 0.0, 1.0):
        out = torch.zeros(5, 4 if var_type == "learned_range" else 2)
        out[:, 2:] = v
        log_var = d.p_mean_variance(out, x_t, t)["log_var"]
        expected = {"fixed_small": post.log(), "fixed_large": torch.where(t == 0, post, beta).log(),
                    "learned_range": (1 + v) / 2 * beta.log() + (1 - v) / 2 * post.log()}[var_type]
        assert torch.allclose(log_var, expected[:, None].float().expand(5, 2), rtol=1e-5)
    p = d.p_mean_variance(out, x_t, t)
    assert torch.allclose(p["var"][1:], p["log_var"][1:].exp(), rtol=1e-5)


def test_clip_modes():
    d = GaussianDiffusion(cosine_betas(1000), mean_type="x0", var_type="fixed_small")
    grid = torch.arange(-200, 201) / 100  # |x| is 0 … 2: its 99.5th percentile is 1.99 (linear)
    x0 = torch.stack([grid, grid / 4])  # the second row lies within [−1, 1]
    x_t, t = torch.ones_like(x0), torch.tensor([300, 300])
    static = d.p_mean_variance(x0, x_t, t, clip="static")["pred_x0"]
    assert torch.equal(static, x0.clamp(-1, 1))
    p = d.p_mean_variance(x0, x_t, t, clip="dynamic")  # [Imagen] Sec. 2.3
    assert torch.allclose(p["pred_x0"][0], grid.clamp(-1.99, 1.99) / 1.99, atol=1e-6)
    assert torch.equal(p["pred_x0"][1], x0[1])  # s = max(percentile, 1) = 1: unchanged
    # ε̂ and the mean follow the clipped x̂_0 [DDIM] Eq. 12
    a, b = AB[300].sqrt().item(), (1 - AB[300]).sqrt().item()
    assert torch.allclose(p["pred_eps"], (x_t - a * p["pred_x0"]) / b, atol=1e-5)


@pytest.mark.parametrize("mean_type", diffusion.MEAN_TYPES)
@pytest.mark.parametrize("var_type", diffusion.VAR_TYPES)
def test_vb_term_is_the_kl_and_the_discretized_nll(mean_type, var_type):
    """[IDDPM] Eqs. 4-6 in bits per dimension, from closed forms computed here in float64."""
    d = GaussianDiffusion(cosine_betas(1000), mean_type=mean_type, var_type=var_type)
    g = seeded(4)
    t = torch.tensor([0, 0, 1, 7, 400, 999])
    x_0 = (torch.randint(0, 256, (6, 3, 4, 4), generator=g) / 127.5 - 1).double()
    x_0[0, 0, 0] = -1.0  # both edge bins
    x_0[0, 0, 1] = 1.0
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    a, b = column(AB[t].sqrt(), x_0), column((1 - AB[t]).sqrt(), x_0)
    x_t = a * x_0 + b * eps
    beta, post, c0 = (column(q, x_0) for q in jump(t - 1, t))
    # the net's x̂_0 is off by a known amount (about half a posterior std in μ̃, a fraction of a
    # bin at t = 0); its output is that x̂_0 in the mean_type's terms
    err = torch.where(column(t, x_0) == 0, 0.004, 0.5 * post.sqrt() / c0)
    x0_hat = x_0 + err * torch.randn(x_0.shape, generator=g, dtype=torch.float64)
    eps_hat = (x_t - a * x0_hat) / b
    out = {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - b * x0_hat}[mean_type]
    post1 = jump(torch.tensor(0), torch.tensor(1))[1]  # β̃_1, used for t = 0
    if var_type == "learned_range":
        v = torch.rand(x_0.shape, generator=g, dtype=torch.float64) * 2 - 1
        out = torch.cat([out, v], dim=1)
        low = torch.where(column(t, x_0) == 0, post1, post)
        var = (beta.log() * (1 + v) / 2 + low.log() * (1 - v) / 2).exp()
    elif var_type == "fixed_small":
        var = torch.where(column(t, x_0) == 0, post1, post)
    else:
        var = torch.where(column(t, x_0) == 0, post1, beta)
    vb = d.vb_term(out.float(), x_0.float(), x_t.float(), t)

    # t > 0: both q(x_{t−1} | x_t, x_0) and p_θ by Bayes' rule as precision-weighted means
    ab_prev, alpha = column(AB[(t - 1).clamp(min=0)], x_0), 1 - beta
    def posterior_mean(x0):
        return post * (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * x_t / beta)
    kl = gaussian_kl(posterior_mean(x_0), post, posterior_mean(x0_hat), var).flatten(1).mean(1)
    # t = 0: p_θ(x_0 | x_1) = N(x̂_0, σ²) integrated over the 8-bit bin x_0 ± 1/255 [DDPM] Eq. 13
    def cdf(z):
        return 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    hi = torch.where(x_0 > 0.999, 1.0, cdf((x_0 + 1 / 255 - x0_hat) / var.sqrt()))
    lo = torch.where(x_0 < -0.999, 0.0, cdf((x_0 - 1 / 255 - x0_hat) / var.sqrt()))
    nll = -(hi - lo).log().flatten(1).mean(1)
    expected = torch.where(t == 0, nll, kl) / math.log(2)
    assert (expected[2:] > 0.05).all() and (expected[:2] > 1).all()  # nothing vanishes by chance
    assert torch.allclose(vb.double(), expected, rtol=2e-3, atol=1e-5)


def test_nll_bits_per_dim_closed_form():
    # an ε model off by a constant c: every term of the bound is then noise-free and closed form.
    # x̂_0 = x_0 − c·√(1/ᾱ_t − 1); with β̃_t the KL at t ≥ 1 is (coef_x0·c·√(1/ᾱ_t − 1))² / (2 β̃_t),
    # L_0 a discretized Gaussian at mean x̂_0, and the prior KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1))
    T, c = 12, 0.05
    diff = GaussianDiffusion(cosine_betas(T), "eps", "fixed_small")
    x_0 = torch.tensor([-1.0, -0.5, 0.0, 127 / 127.5 - 1, 1.0]).reshape(1, 5, 1, 1).repeat(2, 1, 1, 1)

    def model(x_t, t):
        ab = diff.alpha_bar[t].reshape(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * x_0) / (1 - ab).sqrt() + c

    betas = cosine_betas(T).double()
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    nats = 0.0
    for x in x_0[0].flatten().tolist():
        nats += 0.5 * (-math.log(1 - ab[-1]) - 1 + (1 - ab[-1]) + ab[-1] * x * x)  # prior
        for t in range(1, T):
            coef = betas[t] * ab_prev[t].sqrt() / (1 - ab[t])
            nats += float((coef * c * (1 / ab[t] - 1).sqrt()) ** 2 / (2 * post_var[t]))
        m, s = x - c * math.sqrt(1 / ab[0] - 1), math.sqrt(post_var[1])  # L_0: log var clipped to β̃_1
        hi, lo = phi((x - m + 1 / 255) / s), phi((x - m - 1 / 255) / s)
        nats -= math.log(hi if x == -1 else 1 - lo if x == 1 else hi - lo)
    want = float(nats) / 5 / math.log(2)
    assert want > 1  # every part counts: an off-by-c model pays for its error
    assert diff.nll_bits_per_dim(model, x_0).tolist() == pytest.approx([want, want], rel=1e-4)
    # stride 3 with any offset: L_0 and the prior exactly, one t in 3 weighed 3; the offsets' mean is exact
    g = torch.Generator().manual_seed(0)
    runs = [diff.nll_bits_per_dim(model, x_0, stride=3, generator=g)[0].item() for _ in range(40)]
    assert min(runs) < want < max(runs)
    with pytest.raises(ValueError, match="stride"):
        diff.nll_bits_per_dim(model, x_0, stride=T)
    with pytest.raises(ValueError, match="respaced"):
        diff.respace(4).nll_bits_per_dim(model, x_0)


@pytest.mark.parametrize("t_index", [1, 10, 500])
def test_learned_variance_gradient_past_the_range_points_back(t_index):
    # [IDDPM] Eq. 15 with v beyond ±1: L_vlb must still pull v toward its optimum. With the
    # mean off by δ, KL(q ‖ p) is minimal at Σ = β̃_t + δ²; δ is chosen so that is √(β_t β̃_t): v* = 0
    d = GaussianDiffusion(cosine_betas(1000), mean_type="x0", var_type="learned_range")
    t = torch.full((1,), t_index)
    beta, post, c0 = jump(t - 1, t)
    delta = ((beta * post).sqrt() - post).sqrt()
    x_0 = torch.linspace(-0.5, 0.5, 8)[None]

    def vb_grad(v0):
        v = torch.full_like(x_0, v0, requires_grad=True)
        out = torch.cat([x_0 + float(delta / c0), v], dim=1)  # x̂_0 = x_0 + δ/c_x0
        d.training_losses(lambda x_t, tt: out, x_0, t, noise=torch.zeros_like(x_0))["vb"].sum().backward()
        return v.grad.sum().item()
    grads = [vb_grad(v0) for v0 in (-3.0, -1.5, -1.2, -0.5, 0.0, 0.5, 1.2, 1.5, 3.0)]
    assert all(gr < 0 for gr in grads[:4]) and all(gr > 0 for gr in grads[5:])
    assert abs(grads[4]) < 1e-3 * min(abs(gr) for gr in grads[3:6:2])  # zero at v* = 0


def test_hybrid_loss_stops_gradient_and_stays_finite():
    diff = GaussianDiffusion(cosine_betas(2000), var_type="learned_range")
    torch.manual_seed(0)
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
    d, model = base.respace(10), exact_model()
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


def _attention_reference(q, k, v, mask):  # softmax(q k^T / sqrt(hs), masked) v in float64
    w = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return w.masked_fill(~mask, float("-inf")).softmax(-1) @ v.double()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_is_the_masked_softmax_product_in_either_precision(precision):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 8, generator=g) for _ in range(3))
    keys = torch.rand(3, 1, 1, 6, generator=g) > 0.4
    keys[..., 0] = True  # every row sees a key
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    tol = {"fp32": 1e-5, "bf16": 5e-2}[precision]  # bf16 keeps 8 bits of mantissa
    with diffusion.autocast("cpu", precision):
        for mask, kw in ((keys, {"mask": keys}), (causal, {"causal": True})):
            out = diffusion.attention(q, k, v, **kw)
            assert out.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
            torch.testing.assert_close(out.double(), _attention_reference(q, k, v, mask), atol=tol, rtol=tol)
            # the values of keys a query does not see never reach it (query 0 sees key 0 only, causally)
            v2 = torch.where(mask[..., :1, :].transpose(-2, -1), v, v + 1e3)
            assert torch.equal(diffusion.attention(q, k, v2, **kw)[:, :, :1], out[:, :, :1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_attention_of_spatial_queries_over_spatial_and_context_keys(precision):
    # the decoder's shape: 9 queries, 9 + 4 keys, the context keys masked per row [B, 1, 1, S']
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 9, 8, generator=g)
    k, v = (torch.randn(2, 2, 13, 8, generator=g) for _ in range(2))
    mask = torch.ones(2, 1, 1, 13, dtype=torch.bool)
    mask[0, ..., 11:] = False
    tol = {"fp32": 1e-5, "bf16": 5e-2}[precision]
    with diffusion.autocast("cpu", precision):
        out = diffusion.attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), _attention_reference(q, k, v, mask), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="not both"):
        diffusion.attention(q, k, v, mask, causal=True)


def test_attention_under_cpu_bf16_autocast_trains():
    # its gradient is the float64 reference's, to bf16's precision (the softmax backward runs in bf16)
    q = torch.randn(2, 2, 5, 8, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = diffusion.attention(q, q, q, causal=True)
    out.float().square().sum().backward()
    q64 = q.detach().double().requires_grad_()
    _attention_reference(q64, q64, q64, torch.ones(5, 5, dtype=torch.bool).tril()).square().sum().backward()
    assert torch.isfinite(q.grad).all()
    torch.testing.assert_close(q.grad.double(), q64.grad, atol=0.1, rtol=5e-2)
