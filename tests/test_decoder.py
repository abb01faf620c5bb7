"""decoder.py: the timestep embedding, the z_i and caption paths, dropout masks, save/load, and the
conv-only UNet the upsamplers reuse; sampling is test_decoder_sampling.py's."""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn as nn
from tiny_decoder import TINY, inputs, make, seeded

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


def test_map_resolutions_add_z_i_where_the_down_path_enters_them():
    model = make(clip_map=True, map_resolutions=(8,))
    net, (x, t, z, tokens, mask) = model.net, inputs()
    seen = {}
    net.down[1][0].register_forward_hook(lambda m, a, out: seen.update(down=out))  # the 16 -> 8 conv
    net.down[2][0].register_forward_pre_hook(lambda m, a: seen.update(entered=a[0]))  # 8x8's first block
    net(x, t, z, tokens, mask)
    linear = net.entry_maps["8"]  # level 0's 16 channels at 8x8, from √D z_i as every z_i projection
    expected = seen["down"] + linear(z * 16**0.5).view(4, 16, 8, 8)
    assert linear.out_features == 16 * 8 * 8 and torch.allclose(seen["entered"], expected, atol=1e-5)
    assert (seen["entered"] - seen["down"]).abs().max() > 1e-2  # the map is live
    assert make(clip_map=True, map_resolutions=(8,), scramble=0).net.entry_maps["8"].weight.abs().max() == 0
    assert len(make(clip_map=True).net.entry_maps) == 0  # none by default: the checkpoints' keys stay
    with pytest.raises(ValueError, match=re.escape("map_resolutions (16,) needs clip_map, sizes in [8]")):
        make(clip_map=True, map_resolutions=(16,))  # 16 is the image size: no downsample enters it
    with pytest.raises(ValueError, match=re.escape("map_resolutions (8,) needs clip_map")):
        make(map_resolutions=(8,))


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
    assert ctx.shape == (4, 4, 16) and ctx_mask is None  # z_i's tokens alone: always visible
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


def test_the_unet_traces_as_one_graph():
    # fullgraph=True raises at a graph break: the value checks and attention's all-True-mask test are skipped
    # while compiling, so torch.compile (bench.py --compile) sees the whole U-Net, not fragments of it
    model = make(coords=True, clip_map=True, map_resolutions=(8,)).eval()
    x, t, z, tokens, mask = inputs()
    net = torch.compile(model.net, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # attention's CPU bf16 path masks
        assert torch.equal(net(x, t, z, tokens, mask), model.net(x, t, z, tokens, mask))


def test_image_only_context_is_unmasked_and_attends_every_key(monkeypatch):
    # without a caption z_i's tokens are the whole context and always visible: the U-Net passes no mask
    # (a compiled graph would apply an all-True one), and the block is softmax(q k^T / sqrt(hs)) v over
    # the HW spatial keys and the K context ones, written out here with one head
    import decoder
    seen, real = [], decoder.attention
    spy = lambda q, k, v, mask=None, **kw: seen.append(mask) or real(q, k, v, mask, **kw)
    monkeypatch.setattr(decoder, "attention", spy)
    model = make(text_layers=0)
    x, t, z, _, _ = inputs()
    model.net(x, t, z)
    assert seen and all(m is None for m in seen)
    monkeypatch.undo()
    torch.manual_seed(0)
    block = AttentionBlock(8, 8, context_width=5)
    nn.init.normal_(block.proj.weight)  # zero-initialised: the branch would vanish
    x, ctx = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 5)
    tok = block.norm(x).flatten(2).transpose(1, 2)  # [B, 9, 8]
    q, k, v = block.qkv(tok).chunk(3, dim=-1)
    ck, cv = block.context_kv(ctx).chunk(2, dim=-1)

    def out(k, v):  # one head of width 8
        h = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1) @ v
        return x + block.proj(h).transpose(1, 2).reshape(x.shape)
    want = out(torch.cat([k, ck], 1), torch.cat([v, cv], 1))
    assert torch.allclose(block(x, ctx, None), want, atol=1e-5)
    assert torch.allclose(block(x, ctx, torch.ones(2, 4, dtype=torch.bool)), want, atol=1e-5)
    none = torch.zeros(2, 4, dtype=torch.bool)  # every context token masked: the spatial keys alone
    assert torch.allclose(block(x, ctx, none), out(k, v), atol=1e-5)


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
    # a missing field would silently take its default while the weights still fit
    torch.save({**ckpt, "config": {k: v for k, v in ckpt["config"].items() if k != "mean_type"}}, path)
    with pytest.raises(ValueError, match="mean_type"):
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
    with pytest.raises(ValueError, match="even channels"):  # the timestep embedding has even width
        Decoder(DecoderConfig(**{**TINY, "channels": 15}))
    with pytest.raises(ValueError, match=r"tokens must be int64 \[B=4"):  # a caption per image
        model.net(x, t, z, tokens[:3], mask[:3])
    model.eval()
    with pytest.raises(ValueError, match=r"one batch size \(got sizes \[3, 4\]"):
        model.sample(z, tokens[:3], mask[:3], steps=2)
    with pytest.raises(ValueError, match="noise must be x_T"):  # not another resolution
        model.sample(z, tokens, mask, steps=2, noise=torch.randn(4, 3, 8, 8))


def test_paper_decoder_and_toy_preset():
    # DecoderConfig() keeps GLIDE/unCLIP's choices: eps prediction, learned-range variance, two
    # ResBlocks a level, attention at 16x16 and 8x8 in 64-channel heads, no coordinate channels or z_i map,
    # 4 z_i tokens
    paper, toy = DecoderConfig(), toy_config()
    assert (paper.mean_type, paper.learn_sigma, paper.num_res_blocks, paper.attention_resolutions,
            paper.head_channels, paper.coords, paper.clip_map, paper.clip_tokens) == (
        "eps", True, 2, (16, 8), 64, False, False, 4)
    changed = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(toy, f.name)}
    assert changed == {"mean_type", "coords", "clip_map", "map_resolutions", "num_res_blocks",
                       "attention_resolutions", "head_channels", "channels", "channel_mults"}
    assert toy_config(channels=16).channels == 16 and toy_config(mean_type="eps").mean_type == "eps"
