"""decoder.py: shapes, gradients, the z_i and caption paths, dropout masks, batched CFG,
overfitting, DDIM inversion, save/load, and the conv-only UNet the upsamplers reuse."""

import pytest
import torch
import torch.nn as nn

from decoder import AttentionBlock, Decoder, DecoderConfig, UNet, UNetConfig

# clip_dim == text_width on purpose: a projection that collapses to an identity when two widths
# match (a pitfall of open re-implementations) would show up in the tests below.
TINY = dict(image_size=16, channels=16, channel_mults=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), head_channels=8, clip_dim=16, text_layers=1,
            text_width=16, text_heads=2, vocab_size=20, context_length=12, timesteps=100)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(seed: int = 0, scramble: bool = True, **overrides) -> Decoder:
    """A tiny decoder; scramble=True perturbs every weight, so the zero-initialised output
    layers do not make every output 0 (which would let the conditioning tests pass vacuously)."""
    torch.manual_seed(seed)
    model = Decoder(DecoderConfig(**{**TINY, **overrides}))
    if scramble:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=seeded(seed + p.numel())))
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
    model = make(scramble=False)
    x, t, z, tokens, mask = inputs()
    assert model.net(x, t, z, tokens, mask).abs().max() == 0


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


def test_z_i_path_matters_and_a_dropped_z_i_is_ignored():
    model = make()
    x, t, z, tokens, mask = inputs()
    z2 = z.roll(1, dims=0)
    out1, out2 = model.net(x, t, z, tokens, mask), model.net(x, t, z2, tokens, mask)
    assert (out1 - out2).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample depends on z_i
    drop = torch.zeros(4, dtype=torch.bool)
    d1 = model.net(x, t, z, tokens, mask, keep_image=drop)
    d2 = model.net(x, t, z2, tokens, mask, keep_image=drop)
    assert torch.equal(d1, d2)  # exactly independent of z_i
    assert torch.equal(d1, model.net(x, t, None, tokens, mask))  # z_i=None is the null embedding


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
    assert make(clip_map=True, scramble=False).net.image_to_map.weight.abs().max() == 0  # starts off
    with pytest.raises(ValueError, match="clip_map needs 16x16"):
        model.net(torch.randn(1, 3, 8, 8), t[:1], z[:1])
    with pytest.raises(ValueError, match="clip_map needs clip_dim"):
        make(clip_map=True, clip_dim=0, text_layers=0)


def test_image_projections_are_learned_even_when_widths_match():
    # clip_dim == text_width here; an identity "projection" would give both nets the same tokens
    x, t, z, tokens, mask = inputs()
    ctx = [make(seed).net.condition(t, z, None, None, None, None)[1] for seed in (0, 1)]
    assert ctx[0].shape == (4, 4, 16)  # [unCLIP] Sec. 2.1: 4 extra context tokens
    assert not torch.allclose(ctx[0], ctx[1])
    assert not torch.allclose(ctx[0][:, 0], z)


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


def test_padding_never_changes_the_output():
    model = make()
    x, t, z, tokens, mask = inputs()
    garbage = torch.where(mask, tokens, torch.randint(0, 20, tokens.shape, generator=seeded(3)))
    assert torch.allclose(model.net(x, t, z, tokens, mask), model.net(x, t, z, garbage, mask),
                          atol=1e-6)


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


def test_training_drops_conditions_at_the_configured_rates():
    model = make(p_drop_image=0.1, p_drop_text=0.5)
    seen = {}

    def spy(x_t, t, **cond):  # records the masks the loss passes; skips the network
        seen.update(cond)
        return torch.zeros(x_t.shape[0], 6, *x_t.shape[2:])
    model.net.forward = spy
    B = 8000
    x = torch.zeros(B, 3, 16, 16)
    model.loss(x, torch.zeros(B, 16), None, None, generator=seeded(0))
    keep_image, keep_text = seen["keep_image"].float(), seen["keep_text"].float()
    assert abs(keep_image.mean() - 0.9) < 0.015 and abs(keep_text.mean() - 0.5) < 0.02
    assert abs((1 - keep_image).mul(1 - keep_text).mean() - 0.05) < 0.01  # independent


def test_dropout_reaches_the_loss():
    # end to end: with z_i always dropped the loss cannot depend on z_i; with it kept it does
    x, _, z, tokens, mask = inputs()
    x = x.clamp(-1, 1)
    for p_drop, same in ((1.0, True), (0.0, False)):
        model = make(p_drop_image=p_drop)
        losses = [model.loss(x, zz, tokens, mask, generator=seeded(0)) for zz in (z, z.flip(0))]
        assert torch.equal(*losses) == same


def test_batched_cfg_equals_two_separate_passes():
    model = make()
    x, t, z, tokens, mask = inputs()
    calls = []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    guided = model._model_fn(z, tokens, mask, guidance_scale=3.0)(x, t)
    assert len(calls) == 1  # one forward for both halves
    cond = model.net(x, t, z, tokens, mask)
    uncond = model.net(x, t, None, None, None)  # both conditions dropped
    eps = uncond[:, :3] + 3.0 * (cond[:, :3] - uncond[:, :3])  # [CFG] Eq. 6
    assert torch.allclose(guided, torch.cat([eps, cond[:, 3:]], dim=1), atol=1e-5)
    assert torch.allclose(model._model_fn(z, tokens, mask, 1.0)(x, t), cond)


def test_sampling_is_seeded():
    model = make().eval()
    _, _, z, tokens, mask = inputs(B=2)
    a, b, c = (model.sample(z, tokens, mask, steps=4, generator=seeded(s)) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_falls_when_overfitting_a_few_images():
    torch.manual_seed(0)
    model = make(scramble=False, p_drop_image=0.0, p_drop_text=0.0)
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


def test_inversion_is_deterministic_and_conditioned():
    model = make()
    x, _, z, tokens, mask = inputs(B=2)
    x = x.clamp(-1, 1)
    x_T = model.invert(x, z, tokens, mask, steps=5)
    assert torch.equal(x_T, model.invert(x, z, tokens, mask, steps=5))
    assert not torch.allclose(x_T, model.invert(x, z.flip(0), tokens, mask, steps=5))
    assert not torch.allclose(x_T, x)


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
