"""Tests for clip_frozen.py: shapes, pooling, masks, checkpoints, freezing, training; the tokenizers are
test_tokenizers.py's."""
import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_frozen import (
    CLIP,
    ByteTokenizer,
    CLIPConfig,
    FrozenCLIP,
    clip_loss,
    infer_config,
    load_clip,
    load_openai,
    save_clip,
)

TINY = CLIPConfig(embed_dim=32, image_resolution=16, vision_layers=2, vision_width=64,
                  vision_patch_size=4, context_length=24, vocab_size=259, transformer_width=64,
                  transformer_layers=2)  # the ByteTokenizer's vocabulary
# widths that give 2 heads, different depths, patch and resolution: a config shapes must reveal
ODD = CLIPConfig(embed_dim=48, image_resolution=24, vision_layers=1, vision_width=128,
                 vision_patch_size=8, context_length=16, vocab_size=300, transformer_width=128,
                 transformer_layers=3)


def make(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return CLIP(cfg).eval()


def images(n, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, res, res, generator=g) * 2 - 1


def test_imports_only_torch_numpy_pil_stdlib():
    tree = ast.parse(Path(__file__).parents[1].joinpath("clip_frozen.py").read_text())
    roots = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
             for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names}
    project = {p.stem for p in Path(__file__).parents[1].glob("*.py")} - {"clip_frozen"}
    assert not roots & project
    assert roots <= {"torch", "numpy", "PIL", "functools", "gzip", "html", "math", "os", "pathlib", "re",
                     "time", "collections", "dataclasses"}


def test_state_dict_keys_are_openais():
    cfg = CLIPConfig(vision_layers=1, transformer_layers=1)
    block = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]
    expected = {"visual.class_embedding", "visual.positional_embedding", "visual.proj",
                "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias",
                "visual.ln_post.weight", "visual.ln_post.bias", "positional_embedding",
                "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight",
                "ln_final.bias"}
    expected |= {f"{tower}transformer.resblocks.0.{k}" for tower in ("", "visual.") for k in block}
    assert set(CLIP(cfg).state_dict()) == expected


def test_output_shapes():
    model, tok = make(), ByteTokenizer(TINY.context_length)
    tokens, mask = tok(["a red circle", "a blue square on a gray background", "x"])
    assert tokens.shape == mask.shape == (3, 24) and tokens.dtype == torch.long
    pooled, states = model.encode_text(tokens)
    assert pooled.shape == (3, 32) and states.shape == (3, 24, 64)
    assert model.encode_image(images(3)).shape == (3, 32)
    per_image, per_text = model(images(3), tokens)
    assert per_image.shape == (3, 3) and torch.equal(per_image, per_text.t())
    frozen = FrozenCLIP(model, tok)
    z_t, states, mask = frozen.encode_text(["a red circle", "b"])
    assert z_t.shape == (2, 32) and states.shape == (2, 24, 64) and mask.shape == (2, 24)
    assert torch.allclose(z_t.norm(dim=-1), torch.ones(2))
    z_i = frozen.encode_image(images(2))
    assert z_i.shape == (2, 32) and torch.allclose(z_i.norm(dim=-1), torch.ones(2))
    assert (frozen.embed_dim, frozen.text_width, frozen.context_length, frozen.vocab_size) == (
        32, 64, 24, 259)


def test_pooling_reads_the_end_token():
    model, tok = make(), ByteTokenizer(TINY.context_length)
    tokens, mask = tok(["a big red circle", "sq"])
    pooled, states = model.encode_text(tokens)
    end = mask.sum(1) - 1  # the end token is the last real token
    assert torch.equal(tokens[torch.arange(2), end], torch.full((2,), tok.end_token))
    at_end = states[torch.arange(2), end] @ model.text_projection
    assert torch.allclose(pooled, at_end, atol=1e-6)
    assert not torch.allclose(pooled, states[:, -1] @ model.text_projection, atol=1e-3)
    # junk after the end token (where padding sits) changes nothing that is pooled
    junk = tokens.clone()
    junk[~mask] = 7
    assert torch.allclose(model.encode_text(junk)[0], pooled, atol=1e-6)


def test_text_is_causal_and_image_is_not():
    model = make()
    tokens, _ = ByteTokenizer(TINY.context_length)(["a red circle in the top left"])
    changed = tokens.clone()
    changed[0, 10] = 99
    before, after = model.encode_text(tokens)[1], model.encode_text(changed)[1]
    assert torch.allclose(before[:, :10], after[:, :10], atol=1e-6)
    assert not torch.allclose(before[:, 10:], after[:, 10:], atol=1e-3)
    # the image tower reads its class token (position 0): it must see the last patch
    x = images(1)
    y = x.clone()
    y[..., -4:, -4:] = 0
    assert not torch.allclose(model.encode_image(x), model.encode_image(y), atol=1e-4)


def test_save_load_round_trip_and_shape_inference(tmp_path):
    model = make(ODD)
    assert infer_config(model.state_dict()) == ODD
    fresh = CLIP(infer_config(model.state_dict()))
    fresh.load_state_dict(model.state_dict(), strict=True)
    save_clip(model, tmp_path / "clip.pt")
    loaded = load_clip(tmp_path / "clip.pt")
    assert loaded.config == ODD and not (tmp_path / "clip.pt.tmp").exists()
    tokens, _ = ByteTokenizer(16)(["a red circle"])
    for m in (fresh, loaded):
        assert torch.equal(m.encode_text(tokens)[0], model.encode_text(tokens)[0])
        assert torch.equal(m.encode_image(images(2, 24)), model.encode_image(images(2, 24)))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="load_openai"):
        load_clip(tmp_path / "other.pt")


def test_torchscript_archive_loads_through_load_openai(tmp_path):
    model = make(ODD)
    tokens, _ = ByteTokenizer(16)(["a red circle", "blue"])
    x = images(2, 24)
    # imitate OpenAI's release: fp16 weights, three int attributes, a traced forward
    archive = make(ODD).half()
    for name, value in (("input_resolution", 24), ("context_length", 16), ("vocab_size", 300)):
        archive.register_buffer(name, torch.tensor(value))
    archive.load_state_dict(model.state_dict(), strict=False)
    traced = torch.jit.trace(archive, (x.half(), tokens), check_trace=False)
    traced.save(str(tmp_path / "ViT-toy.pt"))
    assert "input_resolution" in torch.jit.load(str(tmp_path / "ViT-toy.pt")).state_dict()
    loaded = load_openai(str(tmp_path / "ViT-toy.pt"))
    assert loaded.config == ODD and loaded.logit_scale.dtype == torch.float32
    assert torch.allclose(loaded.encode_image(x), model.encode_image(x), atol=2e-2)
    assert torch.allclose(loaded.encode_text(tokens)[0], model.encode_text(tokens)[0], atol=2e-2)
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state_dict loads exactly
    assert torch.equal(load_openai(str(tmp_path / "plain.pt")).encode_image(x),
                       model.encode_image(x))


def test_load_openai_rejects_resnet_and_unrelated_files(tmp_path):
    resnet = {**make().state_dict(), "visual.layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    torch.save(resnet, tmp_path / "RN50.pt")
    with pytest.raises(ValueError, match="ResNet.*only OpenAI CLIP ViT"):
        load_openai(str(tmp_path / "RN50.pt"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="neither a TorchScript.*only OpenAI CLIP ViT"):
        load_openai(str(tmp_path / "notes.txt"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"missing \['visual.conv1.weight'.*only OpenAI CLIP ViT"):
        load_openai(str(tmp_path / "other.pt"))


# Two heads per tower: without autograd, eval-mode nn.MultiheadAttention with an even head count takes
# its fused fast path (torch._native_multi_head_attention), as OpenAI's models do under FrozenCLIP. It
# ignores the is_causal hint, so only the explicit mask keeps the text causal there.
TWO_HEADS = CLIPConfig(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=128,
                       vision_patch_size=4, context_length=24, transformer_width=128,
                       transformer_layers=2)


@pytest.fixture
def fast_path_calls(monkeypatch):
    calls, native = [], torch._native_multi_head_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return native(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", counted)
    return calls


def test_text_is_causal_without_autograd(fast_path_calls):
    model = make(TWO_HEADS)
    tokens, _ = ByteTokenizer(24)(["a red circle in the top left"])
    changed = tokens.clone()
    changed[0, 10] = 99
    pooled, states = model.encode_text(tokens)  # autograd on: the reference
    assert pooled.requires_grad and not fast_path_calls
    for no_autograd in (torch.no_grad, torch.inference_mode):
        with no_autograd():
            fast_pooled, fast = model.encode_text(tokens)
            after = model.encode_text(changed)[1]
        assert len(fast_path_calls) == 2 * 2  # two encodes, two blocks each
        fast_path_calls.clear()
        assert torch.allclose(fast_pooled, pooled, atol=1e-5)
        assert torch.allclose(fast, states, atol=1e-5)
        assert torch.allclose(fast[:, :10], after[:, :10], atol=1e-6)
        assert not torch.allclose(fast[:, 10:], after[:, 10:], atol=1e-3)


def test_frozen_clip_equals_the_autograd_path(fast_path_calls):
    model, tok = make(TWO_HEADS), ByteTokenizer(24)
    captions, x = ["a red circle", "a big blue square in the top left", "green"], images(3)
    tokens, mask = tok(captions)
    pooled, states = model.encode_text(tokens)  # before FrozenCLIP turns gradients off
    z_i = model.encode_image(x)
    assert pooled.requires_grad and z_i.requires_grad and not fast_path_calls
    frozen = FrozenCLIP(model, tok, batch_size=2)
    frozen_z_t, frozen_states, frozen_mask = frozen.encode_text(captions)
    frozen_z_i = frozen.encode_image(x)
    assert len(fast_path_calls) == 2 * 2 + 2 * 1  # two chunks through 2 text blocks, 1 image block
    assert torch.equal(frozen_mask, mask)
    assert torch.allclose(frozen_z_t, F.normalize(pooled, dim=-1), atol=1e-5)
    assert torch.allclose(frozen_states, states, atol=1e-5)
    assert torch.allclose(frozen_z_i, F.normalize(z_i, dim=-1), atol=1e-5)


def test_frozen_wrapper_has_no_grads_in_a_training_loop():
    frozen = FrozenCLIP(make(), ByteTokenizer(TINY.context_length), batch_size=2)
    frozen.model.train()  # FrozenCLIP must not rely on the caller to keep eval mode...
    frozen = FrozenCLIP(frozen.model, frozen.tokenizer, batch_size=2)
    assert not frozen.model.training
    head = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(2):
        z_t, states, _ = frozen.encode_text(["a red circle", "a blue square", "green"])
        z_i = frozen.encode_image(images(3))
        assert not (z_t.requires_grad or states.requires_grad or z_i.requires_grad)
        loss = (head(z_t) - z_i).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.parameters())
    # chunking by batch_size=2 gives the same answer as one batch
    whole = FrozenCLIP(frozen.model, frozen.tokenizer, batch_size=256)
    assert torch.allclose(whole.encode_image(images(3)), frozen.encode_image(images(3)), atol=1e-6)


def test_image_preprocessing():
    model = make()
    toy = FrozenCLIP(model, ByteTokenizer(TINY.context_length))
    x = images(2)
    pils = [Image.fromarray(((im.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for im in x]
    assert torch.allclose(toy.preprocess(pils), x, atol=1 / 255 + 1e-6)  # 8-bit rounding only
    with pytest.raises(ValueError, match="16x16"):
        toy.encode_image(images(1, res=32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        toy.encode_image(images(1) * 255)
    openai = FrozenCLIP(model, ByteTokenizer(TINY.context_length), kind="openai")
    # a flat colour of any size becomes the flat normalised colour at 16x16
    flat = torch.full((1, 3, 30, 50), 0.2)
    out = openai.preprocess(flat)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor(
        [0.26862954, 0.26130258, 0.27577711])
    assert out.shape == (1, 3, 16, 16)
    assert torch.allclose(out, ((0.6 - mean) / std).view(1, 3, 1, 1).expand(1, 3, 16, 16),
                          atol=1e-4)
    # center crop: a wide image keeps its middle columns
    wide = torch.full((1, 3, 16, 48), -1.0)
    wide[..., 16:32] = 1.0
    assert torch.allclose(openai.preprocess(wide), ((1 - mean) / std).view(1, 3, 1, 1).expand(
        1, 3, 16, 16), atol=1e-4)
    # resize the short side to 16, then crop: a tall image keeps its middle third, bicubic edges aside
    tall = torch.full((1, 3, 96, 32), -1.0)
    tall[..., 32:64, :] = 1.0
    assert torch.allclose(openai.preprocess(tall)[..., 3:13, :], ((1 - mean) / std).view(1, 3, 1, 1).expand(
        1, 3, 10, 16), atol=1e-4)
    # PIL images of any size and mode: black stays black after resize and crop
    black = openai.preprocess([Image.new("RGB", (40, 20)), Image.new("L", (16, 16))])
    assert torch.allclose(black, (-mean / std).view(1, 3, 1, 1).expand(2, 3, 16, 16), atol=1e-4)


def test_clip_loss():
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(clip_loss(logits), clip_loss(logits.t()))
    assert torch.allclose(clip_loss(torch.full((7, 7), 3.0)), torch.tensor(math.log(7)))
    assert clip_loss(20 * torch.eye(4)) < 1e-6
    # 2x2 closed form: rows and columns both give log(1 + e^(b - a)) for [[a, b], [b, a]]
    assert torch.allclose(clip_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]])),
                          torch.tensor(math.log(1 + math.exp(-1))))
    # asymmetric logits: the mean of the four cross-entropies, -log softmax at the diagonal, by hand
    # (rows: log(1 + e^-1), log(1 + e^-0.5); columns: log(1 + e^-2), log(1 + e^0.5))
    by_hand = sum(math.log(1 + math.exp(d)) for d in (-1, -0.5, -2, 0.5)) / 4
    assert clip_loss(torch.tensor([[2.0, 1.0], [0.0, 0.5]])).item() == pytest.approx(by_hand, rel=1e-6)


COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "white": (1, 1, 1)}
CORNERS = {"top left": (0, 0), "top right": (0, 8), "bottom left": (8, 0), "bottom right": (8, 8)}


def synthetic_batch(g, n=16):
    """A coloured 7x7 square in one quadrant of a black 16x16 image, with a 1-pixel jitter; the
    16 (colour, corner) pairs in random order, so no two captions of a batch are equal."""
    x = -torch.ones(n, 3, 16, 16)
    captions = []
    for k, pair in enumerate(torch.randperm(16, generator=g)[:n].tolist()):
        colour, corner = list(COLOURS)[pair // 4], list(CORNERS)[pair % 4]
        top, left = (a + int(torch.randint(2, (), generator=g)) for a in CORNERS[corner])
        x[k, :, top:top + 7, left:left + 7] = torch.tensor(COLOURS[colour]).view(3, 1, 1)
        captions.append(f"{colour} {corner}")
    return x, captions


def test_training_lowers_loss_and_retrieval_beats_chance():
    # the loss and the parameter groups alone, with [CLIP] Sec. 2.5's AdamW; train_toy.py's loop adds the
    # schedule, clipping and checkpoints (tests/test_train_toy.py)
    cfg = CLIPConfig(embed_dim=32, image_resolution=16, vision_layers=1, vision_width=64,
                     vision_patch_size=4, context_length=16, transformer_width=64,
                     transformer_layers=2)
    model, tok = make(cfg).train(), ByteTokenizer(16)
    g = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(g) for _ in range(10)]
    opt = torch.optim.AdamW(model.param_groups(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    losses = []
    for step in range(100):
        x, captions = batches[step % 10]
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = 1e-3 * min(1, (step + 1) / 5)  # warmup
        loss = model.loss(x, *tok(captions))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:5]) / 5  # from ~log(16)
    frozen = FrozenCLIP(model, tok)
    prompts = [f"{c} {p}" for c in COLOURS for p in CORNERS]
    x, captions = synthetic_batch(torch.Generator().manual_seed(1))  # fresh samples
    sims = frozen.encode_image(x) @ frozen.encode_text(prompts)[0].t()
    accuracy = (sims.argmax(1) == torch.tensor([prompts.index(c) for c in captions])).float()
    assert accuracy.mean() > 0.5  # chance is 1/16


def test_the_loss_of_length_sorted_groups_is_the_loss_of_the_full_batch():
    # the reference: every caption encoded at full length, in batch order; [CLIP] Fig. 3's symmetric loss
    model, tok = make(), ByteTokenizer(TINY.context_length)
    captions = ["a", "red circle", "a much longer caption here", "xy", "blue", "a tiny square at the top"]
    x = images(len(captions))
    tokens, mask = tok(captions)
    with torch.no_grad():
        z_i = F.normalize(model.encode_image(x), dim=-1)
        z_t = F.normalize(model.encode_text(tokens)[0], dim=-1)
        logits = math.exp(model.logit_scale.item()) * z_i @ z_t.t()
        labels = torch.arange(len(captions))
        want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        assert model.loss(x, tokens, mask).item() == pytest.approx(want.item(), rel=1e-5)


def test_only_weights_decay():
    # [CLIP] Sec. 2.5: decoupled weight decay on the weights, not on gains, biases or the temperature
    model = make()
    decay, no_decay = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert {"logit_scale", "ln_final.weight", "ln_final.bias", "visual.class_embedding"} <= kept
    assert {"text_projection", "visual.proj", "token_embedding.weight", "positional_embedding",
            "visual.conv1.weight"} <= decayed


def test_the_loss_clamps_the_logit_scale_to_between_1_and_100():
    # [CLIP] Sec. 2.5: the learned temperature is clipped so logits are scaled by at most 100 (and by at
    # least 1: tau <= 1); the clamp holds for the loss and stays in the parameter
    model, tok = make(), ByteTokenizer(TINY.context_length)
    x, captions = synthetic_batch(torch.Generator().manual_seed(0), 8)
    tokens, mask = tok(captions)
    with torch.no_grad():
        z_t = F.normalize(model.encode_text(tokens)[0], dim=-1)
        cos = F.normalize(model.encode_image(x), dim=-1) @ z_t.t()
    for set_to, scale in ((1e4, 100.0), (0.5, 1.0), (30.0, 30.0)):
        with torch.no_grad():
            model.logit_scale.fill_(math.log(set_to))
            loss = model.loss(x, tokens, mask)
        assert model.logit_scale.exp().item() == pytest.approx(scale)
        assert loss.item() == pytest.approx(clip_loss(scale * cos).item(), rel=1e-4)
    assert clip_loss(1e4 * cos) > 1.5 * clip_loss(100 * cos)  # so the losses tell the scales apart
