"""bench.py: FLOP counting against closed forms, the timer, and a --quick run's JSON."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import bench
from train_toy import Config

FIELDS = ("params", "batch", "gflop_per_example", "first_step_s", "train_step_s", "train_examples_per_s",
          "peak_fraction", "peak_mem_mb", "peak_mem_kind", "sample_s_per_image", "sample_batch",
          "sample_steps")


def test_linear_flops_exact():
    # forward x W^T, backward dX = dY W and dW = dY^T X: three matmuls of 2 * B * in * out each
    torch.manual_seed(0)
    B, n_in, n_out = 5, 8, 4
    lin = torch.nn.Linear(n_in, n_out)
    x = torch.randn(B, n_in, requires_grad=True)
    assert bench.count_flops(lambda: lin(x).sum()) == 2 * n_in * n_out * B * 3


def test_attention_flops_counted_on_cpu():
    # without bench's mapping the fused CPU attention op counts 0. Closed form: forward QK^T and
    # AV (4 b h s^2 d); backward recomputes QK^T and does dV, dP, dQ, dK (10 b h s^2 d)
    b, h, s, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    flops = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum())
    assert flops == 14 * b * h * s * s * d


def test_median_time_calls_and_value():
    calls = []
    t = bench.median_time(lambda: calls.append(1), reps=3, device=torch.device("cpu"), warmup=2)
    assert len(calls) == 5 and 0 <= t < 0.01
    # a window of at least 20 ms repeats a fast call many times; the result stays per call
    calls.clear()
    t = bench.median_time(lambda: calls.append(1), reps=2, device=torch.device("cpu"), warmup=0,
                          min_window=0.02)
    assert len(calls) > 10 and t < 0.005


def test_matmul_peaks_positive():
    peaks = bench.matmul_peaks(torch.device("cpu"), native=False, quick=True, reps=2)
    assert {p: m["n"] for p, m in peaks.items()} == {"fp32": 256, "bf16": 256}
    for m in peaks.values():  # between 10 MFLOP/s and 100 TFLOP/s
        assert math.isfinite(m["gflops"]) and 1e-2 < m["gflops"] < 1e5


def test_quick_run_json(tmp_path, capsys):
    path = tmp_path / "not yet" / "bench.json"  # a missing folder is made, not an error after the run
    report = bench.main(["--quick", "--only", "prior", "--threads", "1", "--json", str(path)])
    saved = json.loads(path.read_text())
    p = "bf16" if bench.cpu_has_native_bf16() else "fp32"  # no --precision: diffusion.autocast's "auto"
    assert saved["models"].keys() == {p} and saved["models"][p].keys() == {"prior"}
    assert saved["threads"] == 1 and saved["native_bf16"] == bench.cpu_has_native_bf16()
    assert saved["matmul"].keys() == {"fp32", "bf16"}
    assert all(m["gflops"] > 0 for m in saved["matmul"].values())
    r = saved["models"][p]["prior"]
    assert set(FIELDS) <= r.keys() and r["precision"] == p
    for key in FIELDS:
        if key not in ("peak_mem_kind", "peak_mem_mb"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["peak_mem_mb"] >= 0  # max-RSS growth: 0 when the process already used more
    assert r["batch"] == Config().opt_prior.batch and r["sample_steps"] == 2  # --quick
    # the derived columns follow from the measured ones, against the peak of their own precision
    assert r["train_examples_per_s"] == pytest.approx(r["batch"] / r["train_step_s"])
    flop_rate = r["gflop_per_example"] * 1e9 * r["train_examples_per_s"]
    assert r["peak_fraction"] == pytest.approx(flop_rate / (saved["matmul"][p]["gflops"] * 1e9))
    profile = r["profile"]["train"]
    assert sum(profile["percent"].values()) == pytest.approx(100) and 0 < profile["traced_fraction"] <= 1
    assert profile["percent"]["optimizer"] > 0 and profile["percent"]["convolutions"] == 0  # no convs
    assert report["models"][p]["prior"] == r
    out = capsys.readouterr().out
    assert "| model | precision | params | GFLOP/example (train)" in out and f"| prior | {p} |" in out
    assert f"| prior train | {p} |" in out


class Event:  # the two fields of a profiler event group_of reads
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("name, group", [
    ("aten::convolution", "convolutions"), ("aten::mkldnn_convolution", "convolutions"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolutions"),
    ("aten::native_group_norm", "GroupNorm"),
    ("autograd::engine::evaluate_function: NativeGroupNormBackward0", "GroupNorm"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"), ("aten::addmm", "matmul/linear"),
    ("autograd::engine::evaluate_function: MmBackward0", "matmul/linear"), ("aten::item", "host syncs"),
    ("Optimizer.step#AdamW.step", "optimizer"), ("optimizer", "optimizer"), ("data", "data"), ("ema", "EMA"),
    ("aten::add_", None), ("aten::silu", None)])
def test_profile_groups_by_op_name(name, group):
    assert bench.group_of(Event(name)) == group


def test_profile_of_a_known_step_puts_its_time_where_it_runs():
    """A step that is almost all convolution, then one that is almost all optimizer: the breakdown
    gives each its group, and the percentages add up to the step's wall time."""
    conv, x = torch.nn.Conv2d(16, 16, 3, padding=1), torch.randn(8, 16, 32, 32)
    params = [torch.zeros(1_000_000, requires_grad=True) for _ in range(8)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = torch.optim.AdamW(params, foreach=False)

    def optimizer_step():
        with torch.profiler.record_function("optimizer"):
            opt.step()
    cpu = torch.device("cpu")
    convs = bench.profiled(lambda: conv(x), 2, cpu)
    steps = bench.profiled(optimizer_step, 2, cpu)
    assert convs["percent"]["convolutions"] > 70 and steps["percent"]["optimizer"] > 70
    for b in (convs, steps):
        assert sum(b["percent"].values()) == pytest.approx(100) and b["step_s"] > 0


def test_peer_comparison_says_why_it_is_skipped(monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    assert "not importable" in bench.peer_comparison(torch.device("cpu"), "fp32", 1, True)["skipped"]


def test_bf16_column_runs_where_asked(capsys):
    report = bench.main(["--quick", "--only", "prior", "--threads", "1", "--precision", "both",
                         "--profile-steps", "0"])
    assert report["models"].keys() == {"fp32", "bf16"}
    assert [report["models"][p]["prior"]["precision"] for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert "| prior | bf16 |" in capsys.readouterr().out


def test_clip_row_is_filed_under_the_precision_it_ran_in():
    """CLIP trains in fp32 whatever --precision says: its row says so and sits under fp32."""
    report = bench.main(["--quick", "--only", "clip", "--threads", "1", "--precision", "bf16",
                         "--profile-steps", "0"])
    assert report["models"].keys() == {"fp32"} and report["models"]["fp32"]["clip"]["precision"] == "fp32"


def test_tiny_decoder_and_upsampler():
    cfg = Config()
    cfg.decoder.channels, cfg.decoder.head_channels, cfg.decoder.text_layers = 8, 8, 1
    cfg.decoder.channel_mults = (1, 2, 2)
    cfg.opt_decoder.batch = 2
    cfg.up1.channels, cfg.opt_up1.batch = 8, 2
    cpu = torch.device("cpu")
    for name, precision in (("decoder", "fp32"), ("up1", "bf16"), ("up1", "fp32")):
        r = bench.bench_model(name, cpu, peak=1e10, reps=1, quick=True, n_sample=2, cfg=cfg,
                              precision=precision)
        assert r["precision"] == precision and r["batch"] == r["sample_batch"] == 2
        assert r["sample_s_per_image"] > 0
        assert 0 < r["gflop_per_example"] < 0.5 and r["train_examples_per_s"] > 0
    # a wider U-Net costs more FLOPs per example: about 4x for twice the channels
    cfg.up1.channels = 16
    wide = bench.bench_model("up1", cpu, peak=1e10, reps=1, quick=True, n_sample=1, cfg=cfg)
    assert 3 < wide["gflop_per_example"] / r["gflop_per_example"] < 4.5


def test_clip_has_no_sampling_and_counts_params():
    cfg = Config()
    cfg.opt_clip.batch = 4
    r = bench.bench_model("clip", "cpu", peak=1e10, reps=1, quick=True, cfg=cfg)
    from clip_frozen import CLIP
    assert r["params"] == sum(p.numel() for p in CLIP(cfg.clip).parameters())
    assert r["sample_s_per_image"] is None and r["sample_steps"] is None


def test_bad_only_names_the_choices():
    with pytest.raises(SystemExit, match="decoder"):
        bench.main(["--only", "decodr"])
    with pytest.raises(ValueError, match="unknown model"):
        bench.build("nope", Config(), torch.device("cpu"), 1, True)


@pytest.mark.parametrize("flag, value", [("--reps", "0"), ("--reps", "-1"), ("--threads", "-2"),
                                         ("--profile-steps", "-1")])
def test_counts_out_of_range_are_refused_before_any_work(flag, value, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "prior", flag, value])
    assert "--reps and --threads must be >= 1, --profile-steps >= 0" in capsys.readouterr().err


def test_unet_layout_and_compile_switches(monkeypatch):
    # channels_last puts the U-Net's convolution weights in NHWC on a CPU (default: NCHW); compile_unet hands
    # the network, not the model, to torch.compile (here its tracing-only "eager" backend), and the autocast
    # hooks go around the compiled wrapper: the net computes in bf16, the loss gets fp32
    cfg = Config()
    cfg.up1.channels, cfg.opt_up1.batch = 8, 2
    cpu, compiled, real = torch.device("cpu"), [], torch.compile
    fake = lambda net, **kw: compiled.append(net) or real(net, backend="eager", **kw)
    monkeypatch.setattr(bench.torch, "compile", fake)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", False)  # restored: bench sets it
    cases, step = [], bench.training_step
    monkeypatch.setattr(bench, "training_step", lambda case: cases.append(case) or step(case))
    for last in (False, True):
        r = bench.bench_model("up1", cpu, peak=1e10, reps=1, quick=True, n_sample=1, cfg=cfg,
                              precision="bf16", channels_last=last, compile_unet=last)
        model = cases[-1]["model"]
        weight = next(m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert weight.is_contiguous(memory_format=torch.channels_last) == last and weight.dim() == 4
        assert r["layout"] == ("channels-last" if last else "nchw") and r["compiled"] == last
        assert r["first_step_s"] > 0 and r["train_examples_per_s"] > 0
    assert isinstance(model.net, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled == [model.net._orig_mod]
    dtypes = []
    model.net._orig_mod.out.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    x = torch.rand(2, 3, cfg.up1.high_res, cfg.up1.high_res) * 2 - 1
    assert model.loss(x).dtype == torch.float32 and dtypes == [torch.bfloat16]


def test_profile_of_one_step_profiles_decoder_sampling():
    # a respaced sampler needs 2 steps: --profile-steps 1 profiles 2 of them, per step
    cfg = Config()
    cfg.decoder.channels, cfg.decoder.head_channels, cfg.decoder.text_layers = 8, 8, 1
    cfg.decoder.channel_mults, cfg.opt_decoder.batch = (1, 2, 2), 2
    r = bench.bench_model("decoder", torch.device("cpu"), peak=1e10, reps=1, quick=True, n_sample=2, cfg=cfg,
                          precision="fp32", profile_steps=1)
    assert r["profile"]["sample"]["step_s"] > 0 and r["profile"]["train"]["step_s"] > 0
