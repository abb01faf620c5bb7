"""Tests for unclip.py on tiny randomly initialised, perturbed stages (tiny_pipeline.py; no training),
CPU, seeded; the command line is test_unclip_cli.py's."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_pipeline import D, parts

import unclip
from clip_frozen import BPETokenizer, save_clip
from prior import ARPrior, DiffusionPrior
from unclip import UnCLIP, from_stage_checkpoints, load_pipeline, save_pipeline, slerp

FAST = dict(decoder_steps=3, upsampler_steps=2)  # sampling steps for every test
GEN = dict(prior_steps=3, **FAST)


@pytest.fixture(scope="module")
def pipe():
    return UnCLIP(*parts())


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(5)
    return torch.rand(3, 8, 8, generator=g) * 2 - 1


# ------------------------------------------------------------------ slerp
def test_slerp_endpoints_norm_and_midpoint_angle():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(2, 4, D, generator=g), dim=-1)
    omega = torch.acos((a * b).sum(-1))
    for theta in (0.0, 1.0, 0.5, 0.3):
        s = slerp(a, b, theta)
        assert torch.allclose(s.norm(dim=-1), torch.ones(4), atol=1e-5)
        # the result is at angle θΩ from a and (1-θ)Ω from b
        assert torch.allclose(torch.acos((s * a).sum(-1).clamp(-1, 1)), theta * omega, atol=1e-3)
        assert torch.allclose(torch.acos((s * b).sum(-1).clamp(-1, 1)), (1 - theta) * omega,
                              atol=1e-3)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    # slerp of non-unit vectors uses the angle of the normalised ones: midpoint of 2e1 and e2
    e = torch.eye(2)
    expected = (2 * e[0] + e[1]) * math.sin(math.pi / 4)  # Ω = π/2: both weights sin(π/4)
    assert torch.allclose(slerp(2 * e[0], e[1], 0.5), expected)


def test_slerp_parallel_small_theta_and_broadcast():
    a = F.normalize(torch.randn(D), dim=0)
    for b in (a.clone(), 3 * a):  # parallel: no NaN, lerp
        s = slerp(a, b, 0.25)
        assert torch.isfinite(s).all() and torch.allclose(s, 0.75 * a + 0.25 * b, atol=1e-6)
    b = F.normalize(torch.randn(D), dim=0)
    assert torch.allclose(slerp(a, b, 1e-9), a, atol=1e-6)  # θ -> 0
    frames = slerp(a[None], b[None], torch.linspace(0, 1, 5))  # one pair, five θ
    assert frames.shape == (5, D)
    assert torch.allclose(frames[0], a, atol=1e-6) and torch.allclose(frames[-1], b, atol=1e-6)
    assert torch.allclose(frames[2], slerp(a, b, 0.5), atol=1e-6)


# ------------------------------------------------------------------ generate
def test_generate_sizes_stages_and_seed(pipe):
    out = pipe.generate(["a red circle", "a blue square"], images_per_caption=2, seed=1, **GEN)
    assert out["z_i"].shape == (4, D)
    assert torch.allclose(out["z_i"].norm(dim=-1), torch.ones(4), atol=1e-5)
    for key, size in (("decoder", 8), ("up1", 16), ("up2", 32)):
        assert out[key].shape == (4, 3, size, size)
        assert out[key].min() >= -1 and out[key].max() <= 1
    assert [x.shape[-1] for x in out["images"]] == [8, 16, 32]
    again = pipe.generate(["a red circle", "a blue square"], images_per_caption=2, seed=1, **GEN)
    other = pipe.generate(["a red circle", "a blue square"], images_per_caption=2, seed=2, **GEN)
    assert torch.equal(out["up2"], again["up2"]) and torch.equal(out["z_i"], again["z_i"])
    assert not torch.allclose(out["decoder"], other["decoder"], atol=1e-3)
    assert not torch.allclose(out["decoder"][0], out["decoder"][1], atol=1e-3)  # n images differ
    pil = unclip.to_pil(out["up2"])
    assert len(pil) == 4 and pil[0].size == (32, 32) and pil[0].mode == "RGB"
    back = torch.from_numpy(np.asarray(pil[0], dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert (back - out["up2"][0]).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit rounding only
    small = pipe.generate(["a red circle"], seed=1, stages="decoder", **GEN)
    assert set(small) == {"z_i", "decoder", "images"}
    assert set(pipe.generate("a red circle", stages="prior", **GEN)) == {"z_i", "images"}


def test_batched_and_single_caption_agree(pipe):
    captions = ["a red circle", "a large green cross in the top left"]
    both = pipe.generate(captions, images_per_caption=2, seed=7, **GEN)
    for k, caption in enumerate(captions):  # image j of caption k uses seed + 10000 k + j
        alone = pipe.generate([caption], images_per_caption=2, seed=7 + 10_000 * k, **GEN)
        for key in ("z_i", "decoder", "up1", "up2"):
            # equal up to float rounding: batch shape and caption padding change kernel order
            assert torch.allclose(both[key][2 * k:2 * k + 2], alone[key], atol=1e-4), key


def test_prior_free_baselines(pipe):
    z_t = pipe.clip.encode_text(["a red circle"])[0]
    text = pipe.generate(["a red circle"], embedding="text", stages="decoder", **GEN)
    assert torch.allclose(text["z_i"], z_t)  # zero-shot: z_t decoded as if it were z_i
    none = pipe.generate(["a red circle"], embedding="none", stages="decoder", **GEN)
    assert none["z_i"] is None
    assert not torch.allclose(text["decoder"], none["decoder"], atol=1e-3)
    no_prior = UnCLIP(pipe.clip, None, pipe.decoder, pipe.upsamplers)
    with pytest.raises(ValueError, match="no prior"):
        no_prior.generate(["a red circle"], **GEN)
    assert torch.equal(no_prior.generate(["a red circle"], embedding="text", stages="decoder",
                                         **GEN)["decoder"], text["decoder"])


def test_seeds_stay_distinct_past_10000_images_a_caption(pipe, monkeypatch):
    seeds = {}
    monkeypatch.setattr(pipe, "_decode", lambda rows, s, *a, **k: seeds.setdefault(len(s), list(s)))
    pipe.generate(["a", "b"], images_per_caption=3, seed=7)
    assert seeds[6] == [7, 8, 9, 10_007, 10_008, 10_009]  # seed + 10000 k + j, as the docstring says
    pipe.generate(["a", "b"], images_per_caption=10_001, seed=7)
    assert len(set(seeds[20_002])) == 20_002 and seeds[20_002][10_001] == 7 + 10_001


def test_stage_errors_and_progress(pipe):
    short = UnCLIP(pipe.clip, pipe.prior, pipe.decoder, pipe.upsamplers[:1])
    with pytest.raises(ValueError, match="up2.*train_toy"):
        short.generate(["a red circle"], stages="up2", **GEN)
    with pytest.raises(ValueError, match="stages must be"):
        pipe.generate(["a red circle"], stages="up3", **GEN)
    with pytest.raises(ValueError, match="up1 takes 16x16"):
        UnCLIP(pipe.clip, pipe.prior, pipe.decoder, pipe.upsamplers[1:])
    for bad in (float("nan"), float("inf"), None):  # NaN would make every image NaN, not an error
        with pytest.raises(ValueError, match="decoder_guidance must be a finite number"):
            pipe.generate(["a red circle"], **{**GEN, "decoder_guidance": bad})
    for steps in (2.0, [2, 1]):
        with pytest.raises(ValueError, match="upsampler_steps must be at least 2"):
            pipe.generate(["a red circle"], **{**GEN, "upsampler_steps": steps})
    calls = []
    short.generate(["a red circle"], progress=lambda *a: calls.append(a), **GEN)
    assert [c for c in calls if c[1] == c[2]] == [("prior", 3, 3), ("decoder", 3, 3),
                                                  ("up1", 2, 2)]


# ------------------------------------------------------------------ applications
TOL = 0.02  # an exact reconstruction's float32 error: x_T's rounding times 1/√ᾱ_T ≈ 2e4 at the first step


@pytest.fixture(scope="module")
def exact():
    """The pipeline with a decoder blind to x_t and t (the input convolution's image weights and the
    timestep embedding's first layer zeroed): ε̂ is one constant c per z_i and guidance. DDIM
    inversion [DDIM] Sec. 4.3 is approximate only because it evaluates ε̂ at x_{t-1} where sampling
    evaluates it at x_t; with a constant ε̂ every level of both is x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) c, so
    DDIM with η = 0 from the inverted x_T gives x_0 back up to float rounding, and its x̂_0 = x_0
    stays inside the sampler's [-1, 1] clip. The first sampling step multiplies any difference in ε̂
    by 1/√ᾱ_T ≈ 2e4, so a reconstruction is decoded in a batch of the inversion's shape (another
    batch shape changes the kernels' rounding by ~1e-6, and the result by ~0.3). A wrong x_T, η, z_i
    or guidance moves the result by about 1; a wrong step count does not show (every level is
    exact). A random-weight decoder that reads x_t inverts badly at any number of steps a unit test
    can afford."""
    clip, prior, decoder, ups = parts()
    with torch.no_grad():
        decoder.net.input_conv.weight[:, :3] = 0
        decoder.net.time_embed[0].weight.zero_()
    return UnCLIP(clip, prior, decoder, ups)


def pair():
    g = torch.Generator().manual_seed(9)
    return torch.rand(2, 3, 8, 8, generator=g) * 2 - 1


def test_variations_eta_zero_reconstructs_the_input(exact, pipe, image):
    # [unCLIP] Sec. 3.1: x_T is the DDIM inversion by default, so η -> 0 gives the image back (one
    # variation: decoded in a batch shaped as the inversion's)
    error = lambda **kw: (exact.variations(image, n=1, **{**FAST, "stages": "decoder", **kw})["decoder"]
                          - image).abs().max()
    assert error(eta=0.0) < TOL
    assert error(eta=0.0, decoder_guidance=1.0) < TOL and error(eta=0.0, decoder_steps=4) < TOL
    assert error(eta=0.0, invert=False) > 0.5  # a random x_T: not the image
    assert error(eta=1.0) > 0.5  # η > 0: variations
    out = pipe.variations(image, n=3, eta=1.0, seed=0, **FAST)
    assert torch.allclose(out["z_i"], pipe._latents([image], invert=False)[0].expand(3, -1))
    assert out["up2"].shape == (3, 3, 32, 32)
    assert not torch.allclose(out["decoder"][0], out["decoder"][1], atol=1e-3)


def test_interpolate_slerps_both_latents(pipe, monkeypatch):
    a, b = pair()
    seen, sample = [], pipe.decoder.sample  # the x_T each decoder call starts from
    monkeypatch.setattr(pipe.decoder, "sample", lambda *args, noise=None, **kw:
                        seen.append(noise) or sample(*args, noise=noise, **kw))
    out = pipe.interpolate(a, b, steps=4, stages="decoder", **FAST)
    z, x_T = pipe._latents([a, b], True, **FAST)
    theta = torch.tensor([0, 1 / 3, 2 / 3, 1])
    torch.testing.assert_close(out["z_i"], slerp(z[:1], z[1:], theta))  # [unCLIP] Sec. 3.2, both slerped
    torch.testing.assert_close(seen[0], slerp(x_T[:1], x_T[1:], theta))
    lerp = x_T[:1] + theta[:, None, None, None] * (x_T[1:] - x_T[:1])
    assert (seen[0][1:3] - lerp[1:3]).abs().max() > 0.01  # not a straight line: norms kept


def test_interpolate_end_frames_reconstruct_the_inputs(exact, pipe):
    a, b = pair()
    ends = exact.interpolate(a, b, steps=2, stages="decoder", **FAST)["decoder"]  # one batch, as [a, b]'s
    assert (ends[0] - a).abs().max() < TOL and (ends[1] - b).abs().max() < TOL
    middle = exact.interpolate(a, b, steps=3, stages="decoder", **FAST)["decoder"][1]
    assert (middle - a).abs().max() > 0.5 and (middle - b).abs().max() > 0.5
    fixed = exact.interpolate(a, b, steps=2, invert=False, stages="decoder", **FAST)["decoder"]
    assert (fixed[0] - a).abs().max() > 0.5  # one random x_T: the ends are no longer the images
    out = pipe.interpolate(a, b, steps=4, seed=0, **FAST)
    z = pipe._latents([a, b], invert=False)[0]
    assert torch.allclose(out["z_i"][[0, -1]], z, atol=1e-5)
    assert torch.allclose(out["z_i"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert out["up2"].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="steps must be at least 2"):
        pipe.interpolate(a, b, steps=1, **FAST)


def test_text_diff_theta_zero_reconstructs_the_input(exact, pipe, image):
    frame = lambda theta: exact.text_diff(image, "a red circle", "a blue circle", thetas=[theta], seed=3,
                                          stages="decoder", **FAST)["decoder"][0]
    assert (frame(0.0) - image).abs().max() < TOL and (frame(0.5) - image).abs().max() > 0.5
    z_t = pipe.clip.encode_text(["a red circle", "a blue circle"])[0]
    z_d = F.normalize(z_t[1] - z_t[0], dim=0)
    z_i = pipe._latents([image], invert=False)[0][0]
    out = pipe.text_diff(image, "a red circle", "a blue circle", thetas=[0.0, 0.5], seed=3, **FAST)
    assert torch.allclose(out["z_i"][1], slerp(z_i, z_d, 0.5), atol=1e-5)
    with pytest.raises(ValueError, match="same z_t"):
        pipe.text_diff(image, "a red circle", "a red circle", **FAST)
    with pytest.raises(ValueError, match="thetas is empty"):
        pipe.text_diff(image, "a red circle", "a blue circle", thetas=(), **FAST)


def test_batch_size_changes_nothing_and_stream_yields_micro_batches(pipe, image):
    a, b = pair()
    runs = {
        "generate": lambda **kw: pipe.generate("a red circle", 5, seed=2, **GEN, **kw),
        "variations": lambda **kw: pipe.variations(image, n=5, seed=2, **FAST, **kw),
        "interpolate": lambda **kw: pipe.interpolate(a, b, steps=5, seed=2, **FAST, **kw),
    }
    ones = {}
    for name, sample in runs.items():  # every row draws its noise from its own generator
        one = ones[name] = sample(batch_size=1)
        three = sample(batch_size=3)
        for key in ("z_i", "decoder", "up1", "up2"):
            # equal up to float rounding (batch shape changes kernel order); shared noise moves them by ~1
            assert torch.allclose(one[key], three[key], atol=1e-4), (name, key)
        assert not torch.allclose(one["decoder"][0], one["decoder"][-1], atol=1e-2), name
    batches = list(pipe.generate("a red circle", 5, seed=2, stream=True, batch_size=2, **GEN))
    assert [len(out["up2"]) for out in batches] == [2, 2, 1]
    assert [x.shape[-1] for x in batches[0]["images"]] == [8, 16, 32]
    assert torch.allclose(torch.cat([out["up2"] for out in batches]), ones["generate"]["up2"], atol=1e-4)
    for bad in (0, 2.0, None, True):
        with pytest.raises(ValueError, match="batch_size must be at least 1"):
            pipe.generate("a red circle", batch_size=bad, **GEN)
    with pytest.raises(ValueError, match="precision must be one of"):
        pipe.variations(image, precision="fp16", **FAST)


def test_precision_option_runs_the_networks_under_autocast(pipe, monkeypatch):
    seen = []
    forward = type(pipe.decoder.net).forward
    monkeypatch.setattr(type(pipe.decoder.net), "forward", lambda self, *a, **kw: (
        seen.append(torch.is_autocast_enabled("cpu")), forward(self, *a, **kw))[1])
    options = dict(stages="decoder", embedding="text", **GEN)
    fp32 = pipe.generate("a red circle", precision="fp32", **options)["decoder"]
    assert seen and not any(seen)
    seen.clear()
    bf16 = pipe.generate("a red circle", precision="bf16", **options)["decoder"]
    assert seen and all(seen) and not torch.is_autocast_enabled("cpu")  # left after the call
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # bf16 matmuls: other rounding
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # precision=None: the caller's autocast holds
        pipe.generate("a red circle", **options)
    assert seen and all(seen)


# ------------------------------------------------------------------ checkpoints
def test_one_file_checkpoint_round_trip(tmp_path, pipe):
    path = tmp_path / "unclip.pt"
    save_pipeline(path, pipe)
    assert not (tmp_path / "unclip.pt.tmp").exists()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == 1 and ckpt["prior"]["kind"] == "diffusion"
    assert set(ckpt) == {"format", "clip", "tokenizer", "prior", "decoder", "upsamplers"}
    loaded = load_pipeline(path)
    a = pipe.generate(["a red circle"], seed=4, **GEN)
    b = loaded.generate(["a red circle"], seed=4, **GEN)
    assert torch.equal(a["up2"], b["up2"]) and torch.equal(a["z_i"], b["z_i"])
    fresh = UnCLIP(*parts(seed=1))  # other weights: other images, so the check above can fail
    assert not torch.allclose(fresh.generate(["a red circle"], seed=4, **GEN)["up2"], a["up2"])


def test_ar_prior_and_parts_round_trip(tmp_path):
    clip, prior, decoder, ups = parts(seed=2, ar=True)
    save_pipeline(tmp_path / "ar.pt", UnCLIP(clip, prior, decoder, ups[:1]))
    loaded = load_pipeline(tmp_path / "ar.pt")
    assert isinstance(loaded.prior, ARPrior) and loaded.stages == ["prior", "decoder", "up1"]
    a = UnCLIP(clip, prior, decoder, ups[:1]).generate(["a cross"], seed=1, candidates=1, **GEN)
    b = loaded.generate(["a cross"], seed=1, candidates=1, **GEN)
    assert torch.equal(a["up1"], b["up1"])


def test_a_bpe_pipeline_round_trips_with_openais_tokenizer(tmp_path):
    clip, prior, decoder, ups = parts(seed=3, tokenizer="bpe")
    pipe = UnCLIP(clip, prior, decoder, ups[:1])
    save_pipeline(tmp_path / "bpe.pt", pipe)
    assert torch.load(tmp_path / "bpe.pt", weights_only=True)["tokenizer"]["kind"] == "bpe"
    loaded = load_pipeline(tmp_path / "bpe.pt")
    assert isinstance(loaded.clip.tokenizer, BPETokenizer) and loaded.clip.tokenizer.context_length == 24
    tokens = loaded.clip.tokenize(["a red circle"])[0][0, :5].tolist()
    assert tokens == [49406, 320, 736, 7117, 49407]  # OpenAI's ids for "a red circle"
    a, b = (p.generate(["a red circle"], seed=1, **GEN)["up1"] for p in (pipe, loaded))
    assert torch.equal(a, b)
    save_clip(clip.model, tmp_path / "clip.pt")  # stage files: the CLIP's vocabulary names the tokenizer
    decoder.save(tmp_path / "decoder.pt")
    assert isinstance(from_stage_checkpoints(tmp_path).clip.tokenizer, BPETokenizer)


def test_stage_checkpoints_folder(tmp_path, pipe):
    save_clip(pipe.clip.model, tmp_path / "clip.pt")
    pipe.prior.save(tmp_path / "prior.pt")
    pipe.decoder.save(tmp_path / "decoder.pt")
    for i, up in enumerate(pipe.upsamplers):
        up.save(tmp_path / f"up{i + 1}.pt")
    ckpt = torch.load(tmp_path / "decoder.pt", weights_only=True)  # resume state is ignored
    torch.save({**ckpt, "train": {"step": 3}}, tmp_path / "decoder.pt")
    loaded = from_stage_checkpoints(tmp_path)
    a, b = (p.generate(["a red circle"], seed=2, **GEN) for p in (pipe, loaded))
    assert torch.equal(a["up2"], b["up2"])
    parts(seed=2, ar=True)[1].save(tmp_path / "ar_prior.pt")  # both priors: the kind asked for
    assert isinstance(from_stage_checkpoints(tmp_path, prior_kind="ar").prior, ARPrior)
    assert isinstance(from_stage_checkpoints(tmp_path).prior, DiffusionPrior)
    with pytest.raises(ValueError, match="prior_kind must be"):
        from_stage_checkpoints(tmp_path, prior_kind="AR")
    os.remove(tmp_path / "ar_prior.pt")
    os.remove(tmp_path / "up1.pt")  # up2 alone does not fit the decoder's 8x8 output: unused
    assert from_stage_checkpoints(tmp_path).stages == ["prior", "decoder"]
    os.remove(tmp_path / "decoder.pt")
    with pytest.raises(FileNotFoundError, match=r"needs clip\.pt and decoder\.pt \(found: clip"):
        from_stage_checkpoints(tmp_path)


def test_checkpoint_errors(tmp_path, pipe):
    with pytest.raises(FileNotFoundError, match="train one with: python train_toy.py"):
        load_pipeline(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.*train_toy"):
        load_pipeline(tmp_path / "corrupt.pt")
    save_pipeline(tmp_path / "good.pt", pipe)
    ckpt = torch.load(tmp_path / "good.pt", weights_only=True)
    torch.save({**ckpt, "format": 2}, tmp_path / "v2.pt")
    with pytest.raises(ValueError, match="format version 2.*reads version 1"):
        load_pipeline(tmp_path / "v2.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "decoder"}, tmp_path / "nodec.pt")
    with pytest.raises(ValueError, match="lacks decoder.*found: clip"):
        load_pipeline(tmp_path / "nodec.pt")
    wrong = {**ckpt, "decoder": {**ckpt["decoder"], "config": {**ckpt["decoder"]["config"],
                                                                "channels": 8}}}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="decoder checkpoint does not fit"):
        load_pipeline(tmp_path / "wrong.pt")
    cfg = {k: v for k, v in ckpt["decoder"]["config"].items() if k != "mean_type"}  # not its default
    torch.save({**ckpt, "decoder": {**ckpt["decoder"], "config": cfg}}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="decoder checkpoint does not fit.*mean_type"):
        load_pipeline(tmp_path / "short.pt")
