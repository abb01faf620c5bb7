"""decoder.py: the timestep embedding, the z_i and caption paths, dropout masks, batched CFG,
clipping, the DDIM inversion round trip, overfitting, save/load, and the conv-only UNet the
upsamplers reuse."""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from decoder import (
    AttentionBlock,
    Decoder,
    DecoderConfig,
    ResBlock,
    UNet,
    UNetConfig,
    toy_config,
)
from diffusion import timestep_embedding

# clip_dim == text_width on purpose: a projection that collapses to an identity when two widths
# match (a pitfall of open re-implementations) would show up in the tests below.
TINY = dict(image_size=16, channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), head_channels=8, clip_dim=16, text_layers=1,
            text_width=16, text_heads=2, vocab_size=20, context_length=12, timesteps=100)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(seed: int = 0, scramble: float = 0.1, **overrides) -> Decoder:
    """A tiny decoder; scramble adds that much noise to every weight, so the zero-initialised
    output layers do not make every output 0 (which would let the conditioning tests pass
    vacuously). scramble=0 keeps the initialisation."""
    torch.manual_seed(seed)
    model = Decoder(DecoderConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scramble * torch.randn(p.shape, generator=seeded(seed + p.numel())))
    return model


def inputs(B: int = 4, seed: int = 0, L: int = 9):
    """x_t, t, unit z_i, and right-padded captions (end token = 19, the highest id)."""
    g = seeded(seed)
    x = torch.randn(B, 3, 16, 16, generator=g)
    t = torch.randint(0, 100, (B,), generator=g)
    z = nn.functional.normalize(torch.randn(B, 16, generator=g), dim=-1)
    lengths = torch.randint(2, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]  # [B, L]
    tokens = torch.randint(1, 19, (B, L), generator=g)
    tokens[torch.arange(B), lengths - 1] = 19
    return x, t, z, tokens * mask, mask


def test_output_shapes():
    model = make().eval()
    x, t, z, tokens, mask = inputs()
    assert model.net(x, t, z, tokens, mask).shape == (4, 6, 16, 16)  # eps and v
    images = model.sample(z, tokens, mask, steps=3, generator=seeded(1))
    assert images.shape == (4, 3, 16, 16) and torch.isfinite(images).all()
    assert model.sample(z, None, None, steps=3, eta=0.0).shape == (4, 3, 16, 16)  # z_i only
    assert model.sample(None, tokens, mask, steps=3).shape == (4, 3, 16, 16)  # caption only
    assert model.invert(images.clamp(-1, 1), z, tokens, mask, steps=3).shape == (4, 3, 16, 16)
    terms = model.loss_terms(x.clamp(-1, 1), z, tokens, mask, generator=seeded(2))
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].dim() == 0
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])


def test_untrained_net_predicts_zero():
    # the output conv and every residual branch start at zero [IDDPM]/ADM
    model = make(scramble=0)
    x, t, z, tokens, mask = inputs()
    assert model.net(x, t, z, tokens, mask).abs().max() == 0


def test_resblock_scales_and_shifts_the_second_norm():
    # ADM's adaptive group norm: h = norm(h) * (1 + scale) + shift, (scale, shift) from emb
    torch.manual_seed(0)
    block = ResBlock(8, 16, emb_dim=4, dropout=0.0)
    with torch.no_grad():
        block.emb_proj.weight.zero_()
        block.emb_proj.bias.copy_(torch.linspace(-1, 1, 32))  # constant scale, shift
        block.conv2.weight.normal_()  # (zero-initialised: the branch would be silent)
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 4)
    scale, shift = torch.linspace(-1, 1, 32)[:, None, None].chunk(2)
    h = block.norm2(block.conv1(nn.functional.silu(block.norm1(x)))) * (1 + scale) + shift
    expected = block.skip(x) + block.conv2(nn.functional.silu(h))
    assert torch.allclose(block(x, emb), expected, atol=1e-5)


def test_timestep_embedding_closed_form():
    # [DDPM] Appendix B / Transformer sinusoids: cos then sin of t * 10000^(-k / (dim/2))
    t, dim = torch.tensor([0, 1, 37, 999]), 16
    k = torch.arange(dim // 2)
    angles = t[:, None].double() * torch.exp(-math.log(10000.0) * k / (dim // 2))[None]
    expected = torch.cat([angles.cos(), angles.sin()], dim=1)
    assert torch.allclose(timestep_embedding(t, dim).double(), expected, atol=1e-4)


def test_gradient_reaches_every_parameter():
    # One backward of the hybrid loss reaches every parameter. The net is scrambled: at the
    # zero initialisation the zero layers block the gradient for the first steps by design.
    # Dropout at 0.5 puts kept and dropped z_i in the batch, so the null embedding is trained.
    model = make(p_drop_image=0.5, p_drop_text=0.5, clip_map=True)
    x, _, z, tokens, mask = inputs(B=8)
    model.loss(x.clamp(-1, 1), z, tokens, mask, generator=seeded(0)).backward()
    dead = [n for n, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().max() == 0]
    assert not dead, f"no gradient reaches {dead}"


def test_z_i_path_matters_and_a_dropped_z_i_is_the_null_embedding():
    model = make()
    x, t, z, tokens, mask = inputs()
    z2 = z.roll(1, dims=0)
    out1, out2 = model.net(x, t, z, tokens, mask), model.net(x, t, z2, tokens, mask)
    assert (out1 - out2).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample depends on z_i
    drop = torch.zeros(4, dtype=torch.bool)
    dropped = model.net(x, t, z, tokens, mask, keep_image=drop)
    # [unCLIP] Sec. 2.1: a dropped z_i is the learned null embedding, whatever z_i was given
    null = model.net.null_image_embed.expand(4, -1)
    assert torch.allclose(dropped, model.net(x, t, null, tokens, mask), atol=1e-6)
    assert torch.equal(dropped, model.net(x, t, z2, tokens, mask, keep_image=drop))
    assert torch.equal(dropped, model.net(x, t, None, tokens, mask))  # z_i=None: the null too
    assert (dropped - out1).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_clip_map_adds_z_i_at_the_middle_block():
    model = make(clip_map=True)
    x, t, z, tokens, mask = inputs()
    z2 = z.roll(1, dims=0)
    out = model.net(x, t, z, tokens, mask)
    with torch.no_grad():
        model.net.image_to_map.weight.zero_(), model.net.image_to_map.bias.zero_()
    assert (model.net(x, t, z, tokens, mask) - out).abs().max() > 1e-3  # the map path is live
    drop = torch.zeros(4, dtype=torch.bool)  # a dropped z_i also drops its map
    assert torch.equal(model.net(x, t, z, tokens, mask, keep_image=drop),
                       model.net(x, t, z2, tokens, mask, keep_image=drop))
    assert make(clip_map=True, scramble=0).net.image_to_map.weight.abs().max() == 0  # starts off
    with pytest.raises(ValueError, match="clip_map needs 16x16"):
        model.net(torch.randn(1, 3, 8, 8), t[:1], z[:1])
    with pytest.raises(ValueError, match="clip_map needs clip_dim"):
        make(clip_map=True, clip_dim=0, text_layers=0)


def test_coords_are_each_pixels_x_and_y():
    model = make(coords=True)
    seen = []
    model.net.input_conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x, t, z, tokens, mask = inputs()
    model.net(x, t, z, tokens, mask)
    h = seen[0]  # [B, 5, H, W]: x_t, then the column's x and the row's y, each in [-1, 1]
    ramp = torch.linspace(-1, 1, 16)
    assert h.shape == (4, 5, 16, 16) and torch.equal(h[:, :3], x)
    assert torch.allclose(h[:, 3], ramp[None, None, :].expand(4, 16, 16))
    assert torch.allclose(h[:, 4], ramp[None, :, None].expand(4, 16, 16))


def test_image_projections_are_learned_even_when_widths_match():
    # clip_dim == text_width here: a "projection" that copies z_i into the context tokens (or
    # tiles it) would fit the shapes. [unCLIP] Sec. 2.1: 4 tokens, each its own projection.
    model = make()
    x, t, z, tokens, mask = inputs()
    emb, ctx, ctx_mask, z_scaled = model.net.condition(t, z, None, None, None, None)
    assert ctx.shape == (4, 4, 16) and ctx_mask.all()
    cos = nn.functional.cosine_similarity(ctx, z[:, None], dim=-1)  # [B, 4]
    assert cos.abs().max() < 0.9  # no token is a multiple of z_i
    assert (ctx[:, 0] - ctx[:, 1]).abs().max() > 1e-2  # the tokens differ from each other
    # unit z_i scaled by sqrt(D): the projections start at the timestep embedding's size
    assert torch.allclose(z_scaled.norm(dim=1), torch.full((4,), 16**0.5))
    # each route alone carries z_i: the 4 attention tokens and the timestep-embedding term
    for route in ("image_to_emb", "image_to_tokens"):
        m = make()
        with torch.no_grad():
            getattr(m.net, route).weight.zero_()
        assert (m.net(x, t, z, tokens, mask) - m.net(x, t, z.flip(0), tokens, mask)).abs().max() > 1e-3, route


def test_caption_path_matters_and_a_dropped_caption_is_ignored():
    model = make()
    x, t, z, tokens, mask = inputs()
    other = inputs(seed=5)[3:]
    out1, out2 = model.net(x, t, z, tokens, mask), model.net(x, t, z, *other)
    assert (out1 - out2).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    drop = torch.zeros(4, dtype=torch.bool)
    d1 = model.net(x, t, z, tokens, mask, keep_text=drop)
    d2 = model.net(x, t, z, *other, keep_text=drop)
    assert torch.allclose(d1, d2, atol=1e-6)
    assert torch.allclose(d1, model.net(x, t, z, None, None), atol=1e-6)  # same as no caption


def test_the_end_token_state_is_added_to_the_embedding():
    # [GLIDE] Sec. 4: the last real token's state is added to the timestep embedding; change
    # that token alone, and the term changes (the state of any earlier position would not)
    model = make()
    _, t, z, tokens, mask = inputs()
    other = tokens.clone()
    other[torch.arange(4), mask.sum(1) - 1] = 18  # another last token (the end id is 19)
    emb = [model.net.condition(t, z, tok, mask, None, None)[0] for tok in (tokens, other)]
    assert (emb[0] - emb[1]).abs().amax(dim=1).min() > 1e-4
    dropped = [model.net.condition(t, z, tok, mask, None, torch.zeros(4, dtype=torch.bool))[0]
               for tok in (tokens, other)]
    assert torch.equal(*dropped)


def test_padding_never_changes_the_output():
    model = make()
    x, t, z, tokens, mask = inputs()
    garbage = torch.where(mask, tokens, torch.randint(0, 20, tokens.shape, generator=seeded(3)))
    assert torch.allclose(model.net(x, t, z, tokens, mask), model.net(x, t, z, garbage, mask),
                          atol=1e-6)


def test_cutting_the_all_padding_columns_never_changes_the_output():
    # what train_toy's decoder batches do (prior.trim_padding): fewer columns, the same function
    from prior import trim_padding
    model = make()
    x, t, z, short, short_mask = inputs(L=9)
    n = int(short_mask.sum(1).max())
    tokens = torch.cat([short[:, :n], torch.zeros(4, 12 - n, dtype=torch.long)], 1)  # 12 - n padding columns
    mask = torch.cat([short_mask[:, :n], torch.zeros(4, 12 - n, dtype=torch.bool)], 1)
    cut, cut_mask = trim_padding(tokens, mask)
    assert cut.shape == (4, n) and torch.equal(cut_mask, short_mask[:, :n])
    # rounding only: other GEMM shapes move the output ~2e-6 of its ~3; a column cut too many
    # or a mask that leaks padding would move it by far more than 1e-5
    assert torch.allclose(model.net(x, t, z, tokens, mask), model.net(x, t, z, cut, cut_mask), atol=1e-5)


def test_masks_act_per_sample():
    # mixed masks in one batch give each row what an all-kept or all-dropped batch gives it
    model = make()
    x, t, z, tokens, mask = inputs()
    keep = torch.tensor([True, False, True, False])
    for name in ("keep_image", "keep_text"):
        mixed = model.net(x, t, z, tokens, mask, **{name: keep})
        kept = model.net(x, t, z, tokens, mask, **{name: torch.ones(4, dtype=torch.bool)})
        dropped = model.net(x, t, z, tokens, mask, **{name: torch.zeros(4, dtype=torch.bool)})
        assert torch.allclose(mixed[keep], kept[keep], atol=1e-5), name
        assert torch.allclose(mixed[~keep], dropped[~keep], atol=1e-5), name
        assert not torch.allclose(kept, dropped, atol=1e-3), name


def test_training_draws_t_and_drops_conditions_at_the_configured_rates():
    model = make(p_drop_image=0.1, p_drop_text=0.5)
    seen = {}

    def spy(x_t, t, **cond):  # records what the loss passes; skips the network
        seen.update(cond, t=t)
        return torch.zeros(x_t.shape[0], 6, *x_t.shape[2:])
    model.net.forward = spy
    B = 8000
    x = torch.zeros(B, 3, 16, 16)
    model.loss(x, torch.zeros(B, 16), None, None, generator=seeded(0))
    keep_image, keep_text = seen["keep_image"].float(), seen["keep_text"].float()
    assert abs(keep_image.mean() - 0.9) < 0.015 and abs(keep_text.mean() - 0.5) < 0.02
    assert abs((1 - keep_image).mul(1 - keep_text).mean() - 0.05) < 0.01  # independent
    # t ~ Uniform{0, ..., T-1}: both ends drawn, mean (T-1)/2 = 49.5 (sd of the mean 0.32)
    t = seen["t"]
    assert t.min() == 0 and t.max() == 99 and abs(t.float().mean() - 49.5) < 1.5


def test_dropout_reaches_the_loss():
    # end to end: with z_i always dropped the loss cannot depend on z_i; with it kept it does
    x, _, z, tokens, mask = inputs()
    x = x.clamp(-1, 1)
    for p_drop, same in ((1.0, True), (0.0, False)):
        model = make(p_drop_image=p_drop)
        losses = [model.loss(x, zz, tokens, mask, generator=seeded(0)) for zz in (z, z.flip(0))]
        assert torch.equal(*losses) == same


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_batched_cfg_equals_two_separate_passes(learn_sigma):
    model = make(learn_sigma=learn_sigma, out_channels=6 if learn_sigma else 3)
    x, t, z, tokens, mask = inputs()
    calls = []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    guided = {s: model._model_fn(z, tokens, mask, guidance_scale=s)(x, t) for s in (0.0, 1.0, 3.0)}
    assert len(calls) == 3  # one forward for both halves
    cond = model.net(x, t, z, tokens, mask)
    uncond = model.net(x, t, None, None, None)  # both conditions dropped
    assert (cond - uncond).abs().max() > 1e-2
    eps = uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3])  # [CFG] Eq. 6
    # the variance channels (learn_sigma) are the conditional ones, not guided [GLIDE] Sec. 2.3
    assert torch.allclose(guided[3.0], torch.cat([eps, cond[:, 3:]], dim=1), atol=1e-5)
    assert torch.allclose(guided[1.0], cond, atol=1e-6)  # s = 1: the conditional model
    assert torch.allclose(guided[0.0][:, :3], uncond[:, :3], atol=1e-6)  # s = 0: unconditional


def test_sampling_is_seeded_guided_and_clipped():
    model = make().eval()
    _, _, z, tokens, mask = inputs(B=2)
    a, b, c = (model.sample(z, tokens, mask, steps=4, generator=seeded(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, model.sample(z, tokens, mask, steps=4, guidance_scale=1.0,
                                              generator=seeded(7)), atol=1e-3)
    # static clipping: the last step returns the x_0 estimate, clamped to [-1, 1]; this
    # scrambled net's estimates overshoot, so the clamp is what keeps the range
    for eta in (None, 0.0):
        out = model.sample(z, tokens, mask, steps=4, eta=eta, generator=seeded(7))
        assert out.abs().max() <= 1 and (out.abs() == 1).float().mean() > 0.2


def test_loss_falls_when_overfitting_a_few_images():
    torch.manual_seed(0)
    model = make(scramble=0, p_drop_image=0.0, p_drop_text=0.0)
    x = -torch.ones(4, 3, 16, 16)  # four coloured squares on black
    for i, (colour, (r, c)) in enumerate(zip(torch.eye(3).tolist() + [[1, 1, 0]],
                                             [(2, 2), (8, 2), (2, 8), (8, 8)], strict=True)):
        x[i, :, r:r + 6, c:c + 6] = torch.tensor(colour)[:, None, None] * 2 - 1
    _, _, z, tokens, mask = inputs()
    batch = lambda n: (x.repeat(n, 1, 1, 1), z.repeat(n, 1), tokens.repeat(n, 1), mask.repeat(n, 1))
    evaluate = lambda: model.loss_terms(*batch(4), generator=seeded(123))  # fixed t and noise
    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(30):
        opt.zero_grad()
        model.loss(*batch(2), generator=seeded(step)).backward()
        opt.step()
    after = evaluate()
    # eps-prediction error starts at E[eps^2] = 1 (the output is zero-initialised)
    assert 0.9 < before["mse"] < 1.1 and after["mse"] < 0.4, (before, after)
    assert after["loss"] < 0.3 * before["loss"], (before, after)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_ddim_inversion_round_trip_is_exact_when_eps_ignores_x_t_and_t(guidance_scale):
    # DDIM inversion [DDIM] Sec. 4.3 steps forward with the eps of the step's start, sampling
    # back uses the eps of its end; the two are the same when the net's eps depends on neither
    # x_t nor t (input conv and time MLP output zeroed), so x_T -> x_0 retraces x_0 -> x_T
    # exactly and every x_0 estimate is x_0 itself (no clipping). Exact but for float32
    # rounding, which the first step back multiplies by 1/sqrt(alpha_bar_{T-1}) ~ 2000: 1/255.
    # The eps still depends on z_i, the caption and the guidance scale, which must match.
    model = make()
    with torch.no_grad():
        model.net.input_conv.weight.zero_(), model.net.time_embed[-1].weight.zero_()
    model.eval()
    x, _, z, tokens, mask = inputs(B=2)
    x = x.clamp(-1, 1)
    seen = []  # the timesteps the net is called at: inversion runs the sampler's in reverse
    model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[1][0].item()))
    x_T = model.invert(x, z, tokens, mask, steps=5, guidance_scale=guidance_scale)
    assert seen == [0, 25, 50, 74, 99]  # 5 evenly spaced of T = 100, both ends [IDDPM] Sec. 4
    assert x_T.std() > 0.3  # noise-like, not x_0 (alpha_bar_{T-1} is ~2e-7)
    back = lambda **kw: model.sample(**{"z_i": z, "tokens": tokens, "mask": mask, "steps": 5,
                                        "guidance_scale": guidance_scale, "eta": 0.0,
                                        "noise": x_T, **kw})
    seen.clear()
    assert (back() - x).abs().max() < 1 / 255
    assert seen == [99, 74, 50, 25, 0]
    assert (back(z_i=z.flip(0)) - x).abs().max() > 0.1  # another z_i: another image
    assert (back(guidance_scale=2.0) - x).abs().max() > 0.1


def test_ddim_inversion_round_trip_error_falls_with_steps():
    # A generic net (v-prediction, the toy decoder's): inversion's first-order error shrinks
    # about as 1/steps [DDIM] Sec. 4.3. Here about 0.5 at 6 steps and 0.15-0.2 at 24.
    model = make(scramble=0.03, mean_type="v").eval()
    x, _, z, tokens, mask = inputs(B=1)
    x = x.clamp(-1, 1)
    err = {}
    for steps in (6, 24):
        x_T = model.invert(x, z, tokens, mask, steps=steps, guidance_scale=1.0)
        back = model.sample(z, tokens, mask, steps=steps, guidance_scale=1.0, eta=0.0, noise=x_T)
        err[steps] = (back - x).abs().max().item()
    assert err[24] < 0.25 and err[24] < err[6] / 2, err


def test_save_load_round_trip(tmp_path):
    model = make()
    path = tmp_path / "decoder.pt"
    model.save(str(path))
    assert not (tmp_path / "decoder.pt.tmp").exists()
    loaded = Decoder.load(str(path))
    assert loaded.cfg == model.cfg and isinstance(loaded.cfg.channel_mults, tuple)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    _, _, z, tokens, mask = inputs(B=2)
    assert torch.equal(model.sample(z, tokens, mask, steps=3, generator=seeded(0)),
                       loaded.sample(z, tokens, mask, steps=3, generator=seeded(0)))


def test_load_rejects_a_state_dict_from_another_config(tmp_path):
    path = tmp_path / "decoder.pt"
    make().save(str(path))
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "config": {**ckpt["config"], "channels": 32}}, path)
    with pytest.raises(ValueError, match="does not fit"):
        Decoder.load(str(path))
    torch.save({**ckpt, "config": {**ckpt["config"], "low_res": 8}}, path)
    with pytest.raises(ValueError, match="low_res"):
        Decoder.load(str(path))


def test_conv_only_unet_with_in_ne_out_channels_at_two_sizes():
    # the upsamplers' network: no z_i, no caption, no attention, [x_t, low-res] -> eps
    cfg = UNetConfig(image_size=16, in_channels=6, out_channels=3, channels=8,
                     channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                     clip_dim=0, text_layers=0)
    net = UNet(cfg)
    assert not any(isinstance(m, AttentionBlock) for m in net.modules()) and net.text is None
    assert not any("image" in name for name, _ in net.named_parameters())
    for size in ((16, 16), (32, 24)):
        x = torch.randn(2, 6, *size)
        out = net(x, torch.tensor([0, 99]))
        assert out.shape == (2, 3, *size)
        out.sum().backward()
        assert torch.isfinite(out).all() and net.out[-1].weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="clip_dim=0"):
        net(x, torch.tensor([0, 99]), z_i=torch.randn(2, 16))
    with pytest.raises(ValueError, match="text_layers=0"):
        net(x, torch.tensor([0, 99]), tokens=torch.ones(2, 3, dtype=torch.long))


def test_bad_input_gets_a_clear_error():
    model = make()
    x, t, z, tokens, mask = inputs()
    with pytest.raises(ValueError, match="x_0 must be"):
        model.loss(torch.zeros(4, 3, 8, 8), z, tokens, mask)
    with pytest.raises(ValueError, match="multiples of 2"):
        model.net(torch.zeros(1, 3, 15, 15), t[:1])
    with pytest.raises(ValueError, match="context_length"):
        model.net(x, t, z, torch.ones(4, 13, dtype=torch.long), torch.ones(4, 13, dtype=torch.bool))
    with pytest.raises(ValueError, match="vocab_size"):
        model.net(x, t, z, tokens + 20, mask)
    with pytest.raises(ValueError, match="z_i must be"):
        model.net(x, t, z[:, :8], tokens, mask)
    with pytest.raises(ValueError, match="out_channels"):
        Decoder(DecoderConfig(**{**TINY, "out_channels": 3}))


def test_paper_decoder_and_toy_preset():
    # DecoderConfig() keeps GLIDE/unCLIP's choices: eps prediction, learned-range variance, two
    # ResBlocks a level, attention at 16x16 and 8x8, no coordinate channels or z_i map, 4 z_i tokens
    paper, toy = DecoderConfig(), toy_config()
    assert (paper.mean_type, paper.learn_sigma, paper.num_res_blocks, paper.attention_resolutions,
            paper.coords, paper.clip_map, paper.clip_tokens) == ("eps", True, 2, (16, 8), False, False, 4)
    changed = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(toy, f.name)}
    assert changed == {"mean_type", "coords", "clip_map", "num_res_blocks", "attention_resolutions"}
    assert toy_config(channels=16).channels == 16 and toy_config(mean_type="eps").mean_type == "eps"
