"""Tests for prior.py: tiny configs, random CLIP-shaped inputs, CPU, seeded."""

import pytest
import torch
import torch.nn.functional as F

from prior import (
    ARPrior,
    ARPriorConfig,
    DiffusionPrior,
    DiffusionPriorConfig,
    Transformer,
    best_of,
    top_half,
    trim_padding,
)

D, W, L = 16, 12, 6  # CLIP dim, text width, caption length (padded)
SMALL = dict(clip_dim=D, text_width=W, width=32, layers=2, heads=2)


def diffusion_prior(seed=0):
    torch.manual_seed(seed)
    return DiffusionPrior(DiffusionPriorConfig(**SMALL))


def ar_prior(seed=0, fit=True, pca_dims=8, buckets=64):
    torch.manual_seed(seed)
    prior = ARPrior(ARPriorConfig(**SMALL, pca_dims=pca_dims, buckets=buckets))
    if fit:
        g = torch.Generator().manual_seed(seed)
        prior.fit_codebook(torch.randn(512, D, generator=g), torch.randn(512, D, generator=g))
    return prior


def captions(lengths, seed=0):
    """Random caption encodings with the given real lengths; padding (at the end) is garbage."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    z_t = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    states = torch.randn(B, L, W, generator=g)
    mask = torch.arange(L)[None] < torch.tensor(lengths)[:, None]
    return z_t, states, mask


class World:
    """Toy data where z_i is a known function of the caption: class c (caption length c + 2,
    class-specific token states) -> z_i near a class prototype."""

    def __init__(self, classes=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.classes = classes
        self.token = torch.randn(classes, W, generator=g)
        self.z_t = F.normalize(torch.randn(classes, D, generator=g), dim=-1)
        self.z_i = F.normalize(torch.randn(classes, D, generator=g), dim=-1)

    def batch(self, B, g):
        c = torch.randint(0, self.classes, (B,), generator=g)
        mask = torch.arange(L)[None] < (c + 2)[:, None]
        states = self.token[c][:, None].expand(B, L, W) + 0.1 * torch.randn(B, L, W, generator=g)
        z_i = F.normalize(self.z_i[c] + 0.05 * torch.randn(B, D, generator=g), dim=-1)
        return c, z_i, self.z_t[c], states, mask


def train(prior, world, steps, seed=0, lr=3e-3):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(prior.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        _, z_i, z_t, states, mask = world.batch(64, g)
        loss = prior.loss(z_i, z_t, states, mask, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ----------------------------------------------------------------------------- Transformer


def test_transformer_is_causal_and_ignores_padded_keys():
    torch.manual_seed(0)
    net = Transformer(width=16, layers=2, heads=2)
    x = torch.randn(2, 7, 16)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 2:4] = False  # two padded positions in the middle (like the text before z_t)
    y = net(x, valid)
    x2 = x.clone()
    x2[:, 5:] += torch.randn(2, 2, 16)  # change the future (random: LayerNorm hides a shift)
    x2[1, 2:4] += torch.randn(2, 16)  # change padded positions
    y2 = net(x2, valid)
    torch.testing.assert_close(y2[0, :5], y[0, :5])
    torch.testing.assert_close(y2[1, [0, 1, 4]], y[1, [0, 1, 4]])
    assert not torch.allclose(y2[:, 5:], y[:, 5:])  # later positions do see earlier changes
    assert torch.isfinite(y).all()


def test_last_positions_equal_the_full_stack():
    """Computing only the last rows in the last block changes none of them."""
    torch.manual_seed(0)
    net = Transformer(width=16, layers=3, heads=2)
    x = torch.randn(2, 7, 16)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[1, 1:3] = False
    full = net(x, valid)
    for last in (1, 3, 7):
        torch.testing.assert_close(net(x, valid, last=last), full[:, -last:], atol=1e-6, rtol=1e-6)


def reference_case():
    """A seeded tiny prior and caption batch: lengths 2, 4, 1 of 5; cond_drop 0.5, so the seed-1
    loss drops some captions (keep = [True, False, False] for both priors)."""
    cfg = dict(clip_dim=4, text_width=6, width=16, layers=2, heads=2, cond_drop=0.5)
    g = torch.Generator().manual_seed(1)
    z_t = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    states = torch.randn(3, 5, 6, generator=g)
    mask = torch.arange(5)[None] < torch.tensor([2, 4, 1])[:, None]
    z_i = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    torch.manual_seed(0)
    prior = DiffusionPrior(DiffusionPriorConfig(**cfg))
    torch.manual_seed(0)
    ar = ARPrior(ARPriorConfig(**cfg, pca_dims=3, buckets=8))
    g = torch.Generator().manual_seed(4)
    ar.fit_codebook(torch.randn(64, 4, generator=g), torch.randn(64, 4, generator=g))
    return prior, ar, (z_i, z_t, states, mask)


def test_reference_values_of_the_unchanged_math():
    """Reference values recorded from the full-sequence Transformer (every position computed in
    every block): computing only the read positions in the last block must give the same loss and
    samples up to float noise."""
    prior, ar, (z_i, z_t, states, mask) = reference_case()
    loss = prior.loss(z_i, z_t, states, mask, generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(1.8688573837280273, abs=1e-5)
    z = prior.sample(z_t, states, mask, steps=4, guidance_scale=2.0, candidates=2,
                     generator=torch.Generator().manual_seed(3))
    expected = torch.tensor([
        [-0.4047693610191345, -0.8201944231987, 0.28617769479751587, 0.28556129336357117],
        [0.16181281208992004, 0.09740380197763443, 0.3282111883163452, 0.9255303740501404],
        [-0.34814557433128357, -0.023108989000320435, 0.46431848406791687, 0.8140448331832886]])
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=0)
    ar_loss = ar.loss(z_i, z_t, states, mask, generator=torch.Generator().manual_seed(1))
    assert ar_loss.item() == pytest.approx(2.24157977104187, abs=1e-5)
    logp = ar.guided(torch.tensor([[1, 2], [3, 4], [5, 6]]), z_t, states, mask, 2.0)
    assert logp[:, :, :3].sum().item() == pytest.approx(-57.662208557128906, abs=1e-4)


def test_ar_logits_at_position_i_ignore_tokens_from_i_on():
    prior = ar_prior()
    z_t, states, mask = captions([3, 5])
    keep = torch.ones(2, dtype=torch.bool)
    tokens = torch.randint(0, 64, (2, 8))
    changed = tokens.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 64
    a = prior(tokens, z_t, states, mask, keep)  # (2, 9, 64)
    b = prior(changed, z_t, states, mask, keep)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # position i predicts token i from tokens < i
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_padding_invariance(kind):
    """Captions of different lengths in one batch give what each gives alone, unpadded."""
    lengths = [2, 6, 4]
    z_t, states, mask = captions(lengths)
    keep = torch.ones(3, dtype=torch.bool)
    if kind == "diffusion":
        prior = diffusion_prior()
        x_t, t = torch.randn(3, D), torch.tensor([5, 500, 999])
        batched = prior(x_t, t, z_t, states, mask, keep)
        alone = [prior(x_t[b:b + 1], t[b:b + 1], z_t[b:b + 1], states[b:b + 1, :n],
                       mask[b:b + 1, :n], keep[:1]) for b, n in enumerate(lengths)]
    else:
        prior = ar_prior()
        tokens = torch.randint(0, 64, (3, 8))
        batched = prior(tokens, z_t, states, mask, keep)
        alone = [prior(tokens[b:b + 1], z_t[b:b + 1], states[b:b + 1, :n], mask[b:b + 1, :n],
                       keep[:1]) for b, n in enumerate(lengths)]
    torch.testing.assert_close(batched, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_trim_padding_drops_only_all_padding_columns():
    z_t, states, mask = captions([2, 4])
    trimmed_states, trimmed_mask = trim_padding(states, mask)
    assert torch.equal(trimmed_states, states[:, :4]) and torch.equal(trimmed_mask, mask[:, :4])


# ----------------------------------------------------------------------------- guidance


def test_dropped_caption_is_ignored_but_x_t_and_t_are_not():
    prior = diffusion_prior()
    z_t, states, mask = captions([3, 5])
    z_t2, states2, mask2 = captions([4, 2], seed=1)
    x_t, t = torch.randn(2, D), torch.tensor([10, 700])
    drop, keep = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    u = prior(x_t, t, z_t, states, mask, drop)
    torch.testing.assert_close(prior(x_t, t, z_t2, states2, mask2, drop), u)  # caption unused
    assert not torch.allclose(prior(x_t + 1, t, z_t, states, mask, drop), u)  # sees x_t
    assert not torch.allclose(prior(x_t, t + 200, z_t, states, mask, drop), u)  # sees t
    assert not torch.allclose(prior(x_t, t, z_t, states, mask, keep), u)  # dropping does something


def test_keep_mask_drops_ten_percent():
    keep = diffusion_prior().keep_mask(20000, torch.Generator().manual_seed(0), "cpu")
    assert abs((~keep).float().mean().item() - 0.1) < 0.01


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_guidance_combines_conditional_and_unconditional(kind):
    z_t, states, mask = captions([3, 5])
    keep, drop = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    if kind == "diffusion":
        prior = diffusion_prior()
        x, t = torch.randn(2, D), torch.tensor([10, 700])
        c = prior(x, t, z_t, states, mask, keep)
        u = prior(x, t, z_t, states, mask, drop)
    else:
        prior = ar_prior()
        x, t = torch.randint(0, 64, (2, 5)), None
        c = prior(x, z_t, states, mask, keep).log_softmax(-1)
        u = prior(x, z_t, states, mask, drop).log_softmax(-1)

    def guided(scale):
        args = (x, t) if kind == "diffusion" else (x,)
        return prior.guided(*args, z_t, states, mask, scale)

    torch.testing.assert_close(guided(1.0), c)  # scale 1 is the conditional path
    torch.testing.assert_close(guided(3.0), u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- sampling


def test_best_of_closed_form():
    z_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = torch.tensor([[[0.0, 1.0], [0.6, 0.8]], [[0.6, 0.8], [1.0, 0.0]]])
    torch.testing.assert_close(best_of(cands, z_t), torch.tensor([[0.6, 0.8], [0.6, 0.8]]))


def test_diffusion_sample_keeps_the_max_dot_candidate():
    """sample(k candidates) == the best of the same k draws made as k separate captions."""
    prior, k = diffusion_prior(), 4
    z_t, states, mask = captions([2, 6, 4, 3, 5, 1])
    best = prior.sample(z_t, states, mask, steps=8, candidates=k,
                        generator=torch.Generator().manual_seed(3))
    rep = [v.repeat_interleave(k, 0) for v in (z_t, states, mask)]
    every = prior.sample(*rep, steps=8, candidates=1, generator=torch.Generator().manual_seed(3))
    every = every.view(6, k, D)
    idx = torch.einsum("bkd,bd->bk", every, z_t).argmax(1)
    torch.testing.assert_close(best, every[torch.arange(6), idx], atol=1e-5, rtol=1e-5)
    assert idx.ne(0).any()  # otherwise "take the first" would pass too
    torch.testing.assert_close(best.norm(dim=-1), torch.ones(6))


def test_top_half_closed_form():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.6, 0.1]])
    expected = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 6 / 7, 1 / 7]])
    torch.testing.assert_close(top_half(probs), expected)


def test_ar_sample_draws_the_dot_token_from_the_top_half(monkeypatch):
    prior = ar_prior()
    z_t, states, mask = captions([3] * 64)
    uniform = lambda tokens, *cond: torch.zeros(len(tokens), tokens.shape[1] + 1, 64)  # noqa: E731
    monkeypatch.setattr(prior, "forward", uniform)
    seen, decode = [], prior.decode
    monkeypatch.setattr(prior, "decode", lambda tokens: seen.append(tokens) or decode(tokens))
    prior.sample(z_t, states, mask, generator=torch.Generator().manual_seed(0))
    tokens = seen[0]  # (64, d + 1)
    assert tokens[:, 0].min() >= 32  # z_i.z_t token: upper half of a uniform distribution
    assert tokens[:, 1:].min() < 32  # the components are not restricted


def test_diffusion_prior_diffuses_z_i_times_sqrt_d(monkeypatch):
    """Unit z_i has entries ~1/sqrt(D), far below the noise; x_0 = z_i sqrt(D) is unit-ish."""
    prior = diffusion_prior()
    seen = {}

    def training_losses(model, x_0, t, noise=None, **kwargs):
        seen["x_0"] = x_0
        return {"loss": x_0.sum(-1)}

    monkeypatch.setattr(prior.diffusion, "training_losses", training_losses)
    z_t, states, mask = captions([3, 5])
    prior.loss(z_t, z_t, states, mask)
    torch.testing.assert_close(seen["x_0"], z_t * D**0.5)
    prior.loss(3 * z_t, z_t, states, mask)  # z_i is normalised first: its norm is not the target's
    torch.testing.assert_close(seen["x_0"], z_t * D**0.5)


def test_ar_sampling_draws_each_token_from_softmax_of_logp_over_temperature(monkeypatch):
    prior = ar_prior()
    z_t, states, mask = captions([3, 5])
    logps, drawn, guided, multinomial = [], [], prior.guided, torch.multinomial

    def spy(*args):
        out = guided(*args)
        return logps.append(out[:, -1]) or out
    monkeypatch.setattr(prior, "guided", spy)
    monkeypatch.setattr(torch, "multinomial", lambda p, n, generator=None: drawn.append(p) or
                        multinomial(p, n, generator=generator))
    prior.sample(z_t, states, mask, temperature=0.25, generator=torch.Generator().manual_seed(0))
    assert len(drawn) == prior.cfg.pca_dims + 1
    for step in range(1, len(drawn)):  # token 0 (z_i.z_t) is also cut to its top half
        torch.testing.assert_close(drawn[step], (logps[step] / 0.25).softmax(-1))


def test_ar_sampling_reproducible_with_seed():
    prior = ar_prior()
    z_t, states, mask = captions([3, 5, 2])
    a = prior.sample(z_t, states, mask, generator=torch.Generator().manual_seed(7))
    b = prior.sample(z_t, states, mask, generator=torch.Generator().manual_seed(7))
    c = prior.sample(z_t, states, mask, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))


# ----------------------------------------------------------------------------- codebook


def test_pca_quantization_round_trip_within_bucket_width():
    torch.manual_seed(0)
    scales = torch.linspace(2.0, 0.1, D)  # anisotropic, so PCA has an order to find
    z_i = F.normalize(torch.randn(4096, D) * scales + 0.5, dim=-1)
    z_t = F.normalize(torch.randn(4096, D), dim=-1)
    prior = ARPrior(ARPriorConfig(**SMALL, pca_dims=D, buckets=256))
    assert abs(prior.fit_codebook(z_i, z_t) - 1.0) < 1e-6  # all components: all variance
    coeffs = (z_i - prior.pca_mean) @ prior.pca_basis.T
    variances = coeffs.var(0)
    assert (variances[:-1] >= variances[1:] - 1e-6).all()  # ordered by eigenvalue
    tokens = prior.encode(z_i, z_t)
    assert tokens.min() >= 0 and tokens.max() < 256
    # Each component lands within half a bucket of its centre ...
    e = prior.edges[1:]
    lo, hi = e.gather(1, tokens[:, 1:].T).T, e.gather(1, tokens[:, 1:].T + 1).T
    half_width = (hi - lo) / 2
    assert ((coeffs - (lo + hi) / 2).abs() <= half_width + 1e-5).all()
    # ... so the un-normalized reconstruction errs by at most the norm of the half widths.
    recon = ((lo + hi) / 2) @ prior.pca_basis + prior.pca_mean
    assert ((recon - z_i).norm(dim=-1) <= half_width.norm(dim=-1) + 1e-5).all()
    assert (prior.decode(tokens) * z_i).sum(-1).min() > 0.99
    # Keeping fewer components reports the variance they explain.
    few = ARPrior(ARPriorConfig(**SMALL, pca_dims=4, buckets=256))
    assert abs(few.fit_codebook(z_i, z_t) - variances[:4].sum() / variances.sum()) < 1e-4


# ----------------------------------------------------------------------------- training


def test_diffusion_prior_learns_z_i_from_caption():
    world, prior = World(), diffusion_prior()
    losses = train(prior, world, 60)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    c, z_i, z_t, states, mask = world.batch(16, torch.Generator().manual_seed(99))
    sample = prior.sample(z_t, states, mask, steps=16, eta=0.0,
                          generator=torch.Generator().manual_seed(0))
    assert (sample * world.z_i[c]).sum(-1).mean() > 0.95  # class prototypes are ~0 apart


def test_ar_prior_learns_z_i_from_caption():
    world, g = World(), torch.Generator().manual_seed(1)
    prior = ar_prior(fit=False, pca_dims=4, buckets=16)  # the 4 classes span 3 components
    _, z_i, z_t, _, _ = world.batch(2048, g)
    prior.fit_codebook(z_i, z_t)
    losses = train(prior, world, 150)
    assert sum(losses[-10:]) < sum(losses[:10]) - 10 * 0.5  # cross-entropy down by 0.5 nats
    c, z_i, z_t, states, mask = world.batch(16, torch.Generator().manual_seed(99))
    sample = prior.sample(z_t, states, mask, temperature=0.5,
                          generator=torch.Generator().manual_seed(0))
    assert (sample * world.z_i[c]).sum(-1).mean() > 0.9  # 0.94-0.99 over seeds; wrong class ~0


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_save_load_gives_identical_samples(kind, tmp_path):
    prior = diffusion_prior() if kind == "diffusion" else ar_prior()
    z_t, states, mask = captions([3, 5])
    path = tmp_path / "prior.pt"
    prior.save(path)
    loaded = type(prior).load(path)
    assert loaded.cfg == prior.cfg
    kwargs = dict(steps=8) if kind == "diffusion" else {}
    a = prior.sample(z_t, states, mask, generator=torch.Generator().manual_seed(1), **kwargs)
    b = loaded.sample(z_t, states, mask, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(a, b)
    other = ARPrior if kind == "diffusion" else DiffusionPrior
    with pytest.raises(ValueError, match="not a"):
        other.load(path)
    torch.save(prior.state_dict(), path)  # a bare state_dict, not save()'s file
    with pytest.raises(ValueError, match="no config/state_dict"):
        type(prior).load(path)


def test_bad_inputs_get_clear_errors():
    prior = diffusion_prior()
    z_t, states, mask = captions([3, 5])
    with pytest.raises(ValueError, match="clip_dim"):
        prior.sample(z_t[:, :8], states, mask)
    with pytest.raises(ValueError, match="text_width"):
        prior.sample(z_t, states[..., :4], mask)
    with pytest.raises(ValueError, match="empty caption"):
        prior.sample(z_t, states, mask & False)
    with pytest.raises(ValueError, match="candidates"):
        prior.sample(z_t, states, mask, candidates=0)
    with pytest.raises(RuntimeError, match="fit_codebook"):
        ar_prior(fit=False).loss(z_t, z_t, states, mask)
