"""Tests for unclip.py: tiny randomly initialised stages (no training), CPU, seeded.

Zero-initialised output layers would make an untrained decoder ignore its weights and its
conditioning, so every parameter is perturbed: outputs then depend on weights, z_i and noise, and
a test that compares outputs can fail."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import unclip
import unclip_cli
from clip_frozen import CLIP, ByteTokenizer, CLIPConfig, FrozenCLIP, save_clip
from decoder import Decoder, DecoderConfig
from prior import ARPrior, ARPriorConfig, DiffusionPrior, DiffusionPriorConfig
from unclip import UnCLIP, from_stage_checkpoints, load_pipeline, save_pipeline, slerp
from upsample import Upsampler, UpsamplerConfig

D, L = 16, 24  # CLIP embedding size, context length
FAST = dict(decoder_steps=3, upsampler_steps=2)  # sampling steps for every test
GEN = dict(prior_steps=3, **FAST)
ROOT = Path(__file__).resolve().parents[1]


def perturb(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return module.eval()


def parts(seed=0, ar=False):
    """CLIP, prior, decoder and two upsamplers (8 -> 16 -> 32), all tiny and random."""
    torch.manual_seed(seed)
    clip = CLIP(CLIPConfig(embed_dim=D, image_resolution=8, vision_layers=1, vision_width=32,
                           vision_patch_size=4, context_length=L, transformer_width=32,
                           transformer_layers=1))
    if ar:
        prior = ARPrior(ARPriorConfig(clip_dim=D, text_width=32, width=32, layers=1, heads=2,
                                      pca_dims=4, buckets=16))
        g = torch.Generator().manual_seed(seed)
        prior.fit_codebook(F.normalize(torch.randn(64, D, generator=g), dim=-1),
                           F.normalize(torch.randn(64, D, generator=g), dim=-1))
    else:
        prior = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=32, width=32,
                                                    layers=1, heads=2))
    decoder = Decoder(DecoderConfig(image_size=8, channels=16, channel_mults=(1, 2),
                                    num_res_blocks=1, attention_resolutions=(4,),
                                    head_channels=16, clip_dim=D, text_layers=1, text_width=16,
                                    text_heads=2, context_length=L))
    ups = [Upsampler(UpsamplerConfig(low_res=lo, high_res=2 * lo, channels=8,
                                     channel_mults=(1, 2), sample_steps=2)) for lo in (8, 16)]
    for i, m in enumerate([clip, prior, decoder, *ups]):
        perturb(m, seed * 10 + i)
    return FrozenCLIP(clip, ByteTokenizer(L)), prior, decoder, ups


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


def test_stage_errors_and_progress(pipe):
    short = UnCLIP(pipe.clip, pipe.prior, pipe.decoder, pipe.upsamplers[:1])
    with pytest.raises(ValueError, match="up2.*train_toy"):
        short.generate(["a red circle"], stages="up2", **GEN)
    with pytest.raises(ValueError, match="stages must be"):
        pipe.generate(["a red circle"], stages="up3", **GEN)
    with pytest.raises(ValueError, match="up1 takes 16x16"):
        UnCLIP(pipe.clip, pipe.prior, pipe.decoder, pipe.upsamplers[1:])
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


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def files(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("cli")
    save_pipeline(folder / "unclip.pt", pipe)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (8, 8), (30, 30, 200)).save(folder / "b.png")
    Image.new("RGBA", (13, 7), (0, 200, 0, 128)).save(folder / "odd.png")
    (folder / "text.png").write_text("this is not an image")
    return folder


def argv_for(files, *args):
    # defaults first, so that args override them (the last occurrence of a flag wins)
    return ["--upsampler-steps", "2", "--checkpoint", str(files / "unclip.pt"), "--prior-steps",
            "2", "--steps", "2", "--device", "cpu", *args]


def cli(files, capsys, *args):
    """In-process run: (exit status, stderr)."""
    code = unclip_cli.main(argv_for(files, *args))
    return code, capsys.readouterr().err


SUBCOMMANDS = {
    "generate": ["a red circle", "a blue square", "--n", "2"],
    "variations": ["--variations", "a.png", "--n", "2"],
    "interpolate": ["--interpolate", "a.png", "b.png", "--n", "3", "--invert"],
    "text-diff": ["--text-diff", "a.png", "a red circle", "a blue circle", "--n", "2"],
    "bad checkpoint": ["a red circle", "--checkpoint", "nope.pt"],
}


@pytest.fixture(scope="module")
def processes(files):
    """Each subcommand run as `python unclip.py ...` in its own process, all started at once
    (most of their time is importing torch): name -> (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    running = {name: subprocess.Popen(
        [sys.executable, str(ROOT / "unclip.py"), *argv_for(files, *args), "--out", f"{name}.png"],
        cwd=files, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in SUBCOMMANDS.items()}
    results = {}
    for name, p in running.items():
        err = p.communicate(timeout=300)[1]
        results[name] = p.returncode, err
    return results


@pytest.mark.parametrize("name", [n for n in SUBCOMMANDS if n != "bad checkpoint"])
def test_cli_subcommands_write_a_grid(files, processes, name):
    code, err = processes[name]
    assert code == 0, err
    assert "it/s" in err and "decoder step" in err and "up2 step" in err
    grid = Image.open(files / f"{name}.png")
    assert grid.width >= 2 * 32  # tiles of the 32x32 final stage, enlarged


def test_cli_user_error_has_no_traceback_in_a_process(processes):
    code, err = processes["bad checkpoint"]
    assert code == 2 and "train one with: python train_toy.py" in err
    assert "Traceback" not in err


def test_cli_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        unclip_cli.main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "--text-diff" in text and "examples:" in text


@pytest.mark.parametrize("args, message", [
    (["  "], "empty caption"),
    (["x" * 40, "--strict"], "needs 42 tokens, over the context length 24"),
    (["--variations", "text.png"], "cannot read image"),
    (["--variations", "nowhere.png"], "cannot read image"),
    ([], "give a caption"),
    (["a red circle", "--checkpoint", "missing.pt"], "train one with: python train_toy.py"),
    (["a red circle", "--checkpoint", "text.png"], "corrupt"),
    (["--interpolate", "a.png", "b.png", "--n", "1"], "--n must be at least 2"),
    *([(["a red circle", "--device", "cuda"], "not available")]
      if not torch.cuda.is_available() else []),
])
def test_cli_bad_input_exits_2(files, capsys, args, message, monkeypatch):
    monkeypatch.chdir(files)
    code, err = cli(files, capsys, *args, "--out", str(files / "bad.png"))
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_tolerated_input_notes(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, err = cli(files, capsys, "x" * 40, "--n", "1", "--stage", "decoder")
    assert code == 0 and "warning:" in err and "over the context length 24" in err
    assert "prior step 2/2" in err and "decoder step 2/2" in err and "up1" not in err
    code, err = cli(files, capsys, "--variations", "odd.png", "--n", "1", "--stage", "decoder")
    assert code == 0 and "mode RGBA" in err and "13x7" in err and "resized to 8x8" in err


@pytest.mark.parametrize("args, message", [
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "inf"], "--guidance must be a finite number"),
    (["--guidance=-inf"], "--guidance must be a finite number"),
    (["--steps", "1"], "--steps must be at least 2"),  # a respaced diffusion keeps steps 0 and T - 1
    (["--steps", "-3"], "--steps must be at least 2"),
    (["--prior-steps", "0"], "--prior-steps must be at least 2"),
    (["--upsampler-steps", "2", "1"], "--upsampler-steps must be at least 2"),
    (["--interpolate", "a.png", "b.png", "--batch-size", "1"], None),  # a batch of 1 is fine
    (["--n", "0"], "--n must be at least 1"),
    (["--n", "-1"], "--n must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "-8"], "--batch-size must be at least 1"),
    (["--eta", "nan"], "--eta must be in [0, 1]"),
    (["--eta", "1.5"], "--eta must be in [0, 1]"),
    (["--seed", "-1"], "--seed must be in [0, 2^63)"),
])
def test_cli_numeric_flags_are_checked_up_front(files, capsys, args, message):
    # the checkpoint does not exist: a bad flag is refused before anything loads
    caption = [] if "--interpolate" in args else ["a red circle"]
    code, err = cli(files, capsys, *caption, *args, "--checkpoint", str(files / "none.pt"))
    assert code == 2 and "Traceback" not in err, err
    assert message in err and "train one with" not in err if message else "train one with" in err


@pytest.mark.parametrize("args, message", [
    (["--steps", "1001"], "--steps must be at most 1000, this checkpoint's T"),
    (["--prior-steps", "1001"], "--prior-steps must be at most 1000"),
    (["--upsampler-steps", "1001"], "--upsampler-steps must be at most 1000"),
    (["--upsampler-steps", "2", "1001"], "--upsampler-steps must be at most 1000"),
    (["--upsampler-steps", "2", "2", "2"], "--upsampler-steps takes one value, or one per upsampler (this "
                                           "checkpoint has 2), got 3"),
])
def test_cli_steps_beyond_the_checkpoints_T(files, capsys, args, message):
    code, err = cli(files, capsys, "a red circle", *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_cli_out_dir_batches_and_bounded_grid(files, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(unclip_cli, "GRID", 2)  # the grid keeps 2 of each caption's images
    grid, out = tmp_path / "grid.png", tmp_path / "all"
    args = ["a red circle", "a blue square", "--n", "3", "--stage", "decoder", "--out", str(grid)]
    code, err = cli(files, capsys, *args, "--out-dir", str(out), "--batch-size", "2")
    assert code == 0, err
    assert sorted(os.listdir(out)) == [f"{k}_{j}.png" for k in range(2) for j in range(3)]
    assert "6/6 images" in err and "s per image" in err and "s left" in err and "2 per row" not in err
    assert 2 * 128 <= Image.open(grid).width < 3 * 128  # tiles enlarged to 128 px: 2 columns, not 3
    code, err = cli(files, capsys, *args, "--out-dir", str(tmp_path / "one"), "--batch-size", "6")
    for name in os.listdir(out):  # each image its own seed: the batch size changes no pixel beyond rounding
        a, b = (np.asarray(Image.open(d / name), dtype=int) for d in (out, tmp_path / "one"))
        assert np.abs(a - b).max() <= 1, name
    code, err = cli(files, capsys, *args, "--out-dir", str(out))  # nothing already written is lost
    assert code == 2 and "is not empty" in err and len(os.listdir(out)) == 6


def test_cli_variations_invert_and_precision(files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(files)
    calls = []
    variations = UnCLIP.variations
    monkeypatch.setattr(UnCLIP, "variations", lambda self, *a, **kw: (calls.append(kw), variations(
        self, *a, **kw))[1])
    for flags in ([], ["--no-invert", "--precision", "fp32"]):
        code, err = cli(files, capsys, "--variations", "a.png", "--n", "1", "--stage", "decoder",
                        "--out", str(tmp_path / "v.png"), *flags)
        assert code == 0 and "1 of 1 images" in err, err  # the input tile is not an image made
    assert [(kw["invert"], kw["precision"]) for kw in calls] == [(True, "auto"), (False, "fp32")]
