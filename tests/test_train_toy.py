"""train_toy.py end to end on tiny settings: all stages, report, resume, refusals, NaN, DDP."""

import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import STEPS, TINY

import metrics
import train_config
import train_toy
from clip_frozen import CLIP
from decoder import Decoder
from prior import DiffusionPrior
from upsample import Upsampler

REPO = Path(__file__).resolve().parents[1]

def test_every_stage_and_the_evaluation_print_progress_with_an_eta(finished_run):
    lines = (finished_run[0] / "stdout.txt").read_text().splitlines()
    for stage in ("clip", "prior", "decoder", "up1", "up2"):
        assert [k for k, line in enumerate(lines) if re.match(rf"{stage} step 2/4 .* eta \d+\.\d min$", line)]
    for k, stage in enumerate(("prior", "decoder", "up1", "up2")):
        assert any(re.match(rf"eval {stage} \({k + 1}/4\) step 2/2 stage eta 0\.0 min$", x) for x in lines)


def test_the_evaluation_eta_is_the_stage_time_per_step_times_the_steps_left(monkeypatch):
    now, lines = [100.0], []
    monkeypatch.setattr(train_toy.time, "perf_counter", lambda: now[0])
    progress = metrics.progress_log(["decoder", "up1"], lines.append, every=25)
    for stage, n, seconds_per_step in (("decoder", 10, 6.0), ("up1", 4, 30.0)):
        for i in range(1, n + 1):
            now[0] += seconds_per_step
            progress(stage, i, n)
    # every 25 s and at each stage's end; decoder: 6 s a step, up1: 30 s a step
    assert lines == ["eval decoder (1/2) step 5/10 stage eta 0.5 min",
                     "eval decoder (1/2) step 10/10 stage eta 0.0 min",
                     "eval up1 (2/2) step 1/4 stage eta 1.5 min",
                     "eval up1 (2/2) step 2/4 stage eta 1.0 min",
                     "eval up1 (2/2) step 3/4 stage eta 0.5 min",
                     "eval up1 (2/2) step 4/4 stage eta 0.0 min"]


def test_all_stages_write_checkpoints_and_report(finished_run):
    out, report = finished_run
    for name in ("clip", "prior", "decoder", "up1", "up2", "unclip"):
        assert (out / f"{name}.pt").exists(), name
    saved = json.loads((out / "report.json").read_text())
    for key in ("clip_score", "fd_clip", "prior_cosine", "accuracy_32", "accuracy_128",
                "prior_retrieval", "seconds"):
        assert key in saved, key
    assert saved["accuracy_32"]["all"]["n"] == 4
    assert set(saved["seconds"]) >= {"clip", "prior", "decoder", "up1", "up2", "eval"}
    assert (out / "report.md").read_text().startswith("# tinyunclip")
    assert (out / "samples_32.png").exists() and (out / "samples_128.png").exists()
    for name in ("prior", "decoder", "up1", "up2"):  # a preview grid at each checkpoint
        grids = sorted(p.name for p in (out / "grids").glob(f"{name}_*.png"))
        assert grids == [f"{name}_00002.png", f"{name}_00004.png"], grids
    ck = torch.load(out / "decoder.pt", weights_only=True)
    assert ck["train"]["step"] == STEPS and len(ck["train"]["history"]) == STEPS
    Decoder.load(out / "decoder.pt")  # the module's own loader reads a stage checkpoint


def test_refuses_to_overwrite_a_finished_run(finished_run):
    out, _ = finished_run
    with pytest.raises(SystemExit, match="already holds clip.pt, prior.pt, decoder.pt, up1.pt, up2.pt, "
                                         "unclip.pt, report.json. Pass --resume .* --overwrite"):
        train_toy.main(TINY + ["--out", str(out)])


@pytest.mark.parametrize("name", ["clip.pt", "prior.pt", "decoder.pt", "up1.pt", "up2.pt", "unclip.pt"])
def test_a_folder_with_any_checkpoint_needs_resume_or_overwrite(finished_run, tmp_path, name):
    # a run killed mid-way and started again without --resume would retrain (and overwrite) it
    shutil.copy(finished_run[0] / name, tmp_path / name)
    before = (tmp_path / name).read_bytes()
    with pytest.raises(SystemExit, match=rf"{tmp_path} already holds {name}\. Pass --resume .* --overwrite"):
        train_toy.main(TINY + ["--out", str(tmp_path)])
    assert (tmp_path / name).read_bytes() == before
    with pytest.raises(SystemExit, match="not both"):
        train_toy.main(TINY + ["--out", str(tmp_path), "--resume", "--overwrite"])


def test_a_failed_overwrite_puts_back_what_it_set_aside(finished_run, tmp_path):
    for name in ("clip.pt", "prior.pt", "decoder.pt", "report.json", "unclip.pt"):
        shutil.copy(finished_run[0] / name, tmp_path / name)
    (tmp_path / "decoder_000002.pt").write_bytes(b"an earlier run's snapshot")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.*")}
    with pytest.raises(FloatingPointError):  # diverges before the first decoder checkpoint
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--overwrite",
                               "--opt_decoder.lr", "1e30"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.*")} == before  # as it was, nothing .old
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable image"):  # fails loading the data, after the set-aside
        train_toy.main(TINY + ["--out", str(tmp_path), "--overwrite", "--data",
                               f"folder:{tmp_path / 'empty'}"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.*")} == before
    train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--overwrite",
                           "--opt_decoder.steps", "2"])
    assert torch.load(tmp_path / "decoder.pt", weights_only=True)["train"]["step"] == 2  # trained afresh
    assert not (tmp_path / "decoder_000002.pt").exists()  # the stale snapshot went at that first save
    assert not list(tmp_path.glob("*.old")) and (tmp_path / "prior.pt").read_bytes() == before["prior.pt"]


def test_unknown_option_and_stage_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        train_toy.main(["--decoder.no_such_field", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown stages"):
        train_toy.main(TINY + ["--stages", "clip,vae", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("option, value, message", [
    ("opt_decoder.steps", "0", "--opt_decoder.steps 0: must lie in [1, 100000]"),
    ("opt_up1.steps", "100001", "--opt_up1.steps 100001: must lie in [1, 100000]"),
    ("seed", "4294967296", "--seed 4294967296: must lie in [0, 2^32)"),
    ("device", "cuda:99", "--device cuda:99: this torch sees no such device"),
    ("stages", "decoder", "clip.pt does not exist; add clip to --stages"),
    ("opt_clip.batch", "-4", "--opt_clip.batch -4: must be >= 1"),
    ("opt_prior.lr", "nan", "--opt_prior.lr nan: must be a finite number"),
    ("opt_up1.lr", "0", "--opt_up1.lr 0.0: must be > 0"),
    ("opt_up2.ema", "1", "--opt_up2.ema 1.0: must lie in [0, 1)"),
    ("opt_prior.weight_decay", "-0.1", "--opt_prior.weight_decay -0.1: must be >= 0"),
    ("decoder.p_drop_text", "1.5", "--decoder.p_drop_text 1.5: must lie in [0, 1]"),
    ("sampling.guidance", "inf", "--sampling.guidance inf: must be a finite number"),
    ("two_objects", "1.2", "--two_objects 1.2: must lie in [0, 1]"),
    ("sampling.up_steps", "2,1", "--sampling.up_steps 2,1: must be >= 2"),
    ("sampling.up_steps", "5", "--sampling.up_steps 5: needs one value per upsampler (2)"),
    ("data", "mnist:/data", "--data mnist:/data: must be shapes, fashion_mnist:PATH, cifar10:PATH or"),
    ("data", "fashion_mnist:", "--data fashion_mnist:: must be shapes"),
    ("data", "fashion_mnist:/no/such", "--data fashion_mnist:/no/such: /no/such does not exist"),
    ("sampling.decoder_steps", "1001", "--sampling.decoder_steps 1001: must be <= --decoder.timesteps 1000"),
    ("opt_prior.batch", "four", "--opt_prior.batch four: must be an int"),
    ("up1.low_res", "16", "--up1.low_res 16: must equal --clip.image_resolution 32"),
    ("up2.high_res", "96", "--up2.high_res: sizes (32, 64, 96) must be powers of two"),
    ("clip.vision_patch_size", "5", "--clip.* do not fit: image_resolution 32 is not a multiple of"),
    ("decoder.channel_mults", "1,1,1,1,1,1,1", "--decoder.channel_mults 1,1,1,1,1,1,1: its 32x32 images"),
    ("decoder.clip_map", "false", "--decoder.* do not fit: map_resolutions (16,) needs clip_map"),
    ("prior.heads", "3", "--prior.* do not fit: width 32 must be even and divisible by heads 3"),
    ("snapshot_every", "3", "--snapshot_every 3: must be a multiple of --ckpt_every 2"),
    ("tokenizer", "words", "--tokenizer words: must be one of bpe, byte"),
    ("clip.vocab_size", "1000", "--clip.vocab_size 1000: the bpe tokenizer has 49408 ids and sets it"),
])
def test_bad_options_are_refused_naming_the_flag_before_any_work(tmp_path, monkeypatch, option, value,
                                                                 message):
    monkeypatch.setattr(train_toy, "load_data", lambda *a: pytest.fail("work started"))
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=re.escape(message)):
        train_toy.main(TINY + ["--out", str(out), f"--{option}", value])
    assert not out.exists()


def test_the_tokenizer_sets_the_vocabulary_of_the_clip_and_the_decoder(finished_run, tmp_path):
    for kind, vocab in (("bpe", 49408), ("byte", 259)):
        cfg, _ = train_config.parse_args(["--tokenizer", kind])
        train_config.check_config(cfg, list(train_config.STAGES), world=1)
        assert cfg.clip.vocab_size == cfg.decoder.vocab_size == vocab
    shutil.copy(finished_run[0] / "clip.pt", tmp_path / "clip.pt")  # trained on BPE ids, the default
    with pytest.raises(SystemExit, match="clip.pt is a CLIP trained on bpe tokens: pass --tokenizer bpe"):
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "prior", "--resume",
                               "--tokenizer", "byte"])


def test_the_defaults_and_quick_pass_the_checks():
    no_maps = ["--decoder.clip_map", "false", "--decoder.map_resolutions", ""]  # as README says
    for argv in ([], ["--quick"], ["--prior_kind", "ar"], no_maps):
        cfg, _ = train_config.parse_args(argv)
        train_config.check_config(cfg, list(train_config.STAGES), world=1)


@pytest.mark.parametrize("stage, model_cls", [("clip", CLIP), ("prior", DiffusionPrior), ("decoder", Decoder),
                                              ("up1", Upsampler)])
def test_a_killed_stage_resumes_to_the_weights_of_an_uninterrupted_run(finished_run, tmp_path, monkeypatch,
                                                                       stage, model_cls):
    done, _ = finished_run
    if stage != "clip":
        shutil.copy(done / "clip.pt", tmp_path / "clip.pt")
    args = TINY + ["--out", str(tmp_path), "--stages", stage, "--resume"]
    real_loss, calls = model_cls.loss, [0]

    def dies_at_step_3(self, *a, **k):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # a kill after the step-2 checkpoint
        return real_loss(self, *a, **k)

    monkeypatch.setattr(model_cls, "loss", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_toy.main(args)
    killed = torch.load(tmp_path / f"{stage}.pt", weights_only=True)["train"]
    assert killed["step"] == 2
    monkeypatch.setattr(model_cls, "loss", real_loss)
    train_toy.main(args)
    resumed, uninterrupted = (torch.load(d / f"{stage}.pt", weights_only=True) for d in (tmp_path, done))
    assert resumed["train"]["step"] == STEPS
    assert resumed["train"]["seconds"] > killed["seconds"] > 0  # the training seconds carry on
    # same data, same RNG stream: the loss history continues exactly, to the same weights
    assert resumed["train"]["history"] == uninterrupted["train"]["history"]
    for a, b in ((resumed["state_dict"], uninterrupted["state_dict"]),
                 (resumed["train"]["model"], uninterrupted["train"]["model"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_stage_under_other_options_is_refused_and_keeps_its_checkpoint(finished_run, tmp_path):
    done, _ = finished_run
    for name in ("clip.pt", "decoder.pt"):
        shutil.copy(done / name, tmp_path / name)
    before = (tmp_path / "decoder.pt").read_bytes()
    args = TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume", "--decoder.channels", "16",
                   "--decoder.map_resolutions", ""]
    # each differing field as the command line would write it back
    refused = re.escape('decoder.pt was trained with --decoder.channels 8 (now 16), '
                        '--decoder.map_resolutions 16 (now "")')
    with pytest.raises(SystemExit, match=refused):
        train_toy.main(args)
    assert (tmp_path / "decoder.pt").read_bytes() == before


def test_clip_trains_with_its_own_adamw_settings_and_a_schedule_to_zero(finished_run):
    # [CLIP] Sec. 2.5 through the shared loop: β2 0.98, ε 1e-6, decay 0.2 on weights only, cosine to 0, no EMA
    ck = torch.load(finished_run[0] / "clip.pt", weights_only=True)
    decay, no_decay = ck["train"]["opt"]["param_groups"]
    assert decay["betas"] == (0.9, 0.98) and decay["eps"] == 1e-6 and decay["weight_decay"] == 0.2
    assert no_decay["weight_decay"] == 0.0 and no_decay["lr"] == decay["lr"]
    warmup = STEPS // 10 + 1  # then cosine over the steps left, evaluated at the last one
    cosine = 0.5 * (1 + math.cos(math.pi * (STEPS - 1 - warmup) / (STEPS - warmup)))
    assert decay["lr"] == pytest.approx(1e-3 * cosine)
    model = ck["train"]["model"]
    assert all(torch.equal(model[k], v) for k, v in ck["state_dict"].items())  # EMA 0: the last weights


def test_adamw_is_one_fused_kernel_and_takes_the_closed_form_first_step():
    oc = train_config.Optim(steps=1, batch=1, lr=0.1, weight_decay=0.5)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = oc.adamw([p], torch.device("cpu"))
    assert opt.defaults["fused"] and not opt.defaults["foreach"]
    p.grad = torch.tensor([0.5, -4.0, 0.0])
    opt.step()
    # the first step's bias-corrected m / sqrt(v) is g / |g| (0 where g = 0), after the decoupled decay
    expected = torch.tensor([1.0, -2.0, 3.0]) * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, -1.0, 0.0])
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    assert oc.adamw([p], torch.device("mps")).defaults["foreach"]  # fused only where torch has it


FAULTS = """
import ctypes, resource, sys, torch
import metrics
if sys.argv[1] == "reuse":
    assert metrics.reuse_freed_memory()
else:  # glibc's initial threshold, held there: every 16 MiB block is a fresh mapping
    ctypes.CDLL(None).mallopt(-3, 128 << 10)
def step():  # eight 16 MiB blocks written and freed, as a step's activations are
    blocks = [torch.ones(4 << 20) for _ in range(8)]
    del blocks
for _ in range(3):  # the allocator settles
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_freed_step_memory_is_reused_without_new_page_faults():
    # A step writes 32 768 pages. Mapped afresh (the control) each step faults them all in again; glibc's
    # default thresholds move with what was freed and land between the two; reuse_freed_memory() keeps them.
    root = Path(__file__).resolve().parent.parent
    faults = {arm: float(subprocess.run([sys.executable, "-c", FAULTS, arm], cwd=root, check=True,
                                        capture_output=True, text=True).stdout.split()[-1])
              for arm in ("mapped", "reuse")}
    assert faults["mapped"] > 30000 and faults["reuse"] < 3000, faults


def test_nan_loss_stops_and_keeps_the_checkpoint(finished_run, tmp_path, monkeypatch):
    done, _ = finished_run
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(done / "clip.pt", out / "clip.pt")
    real_loss = Decoder.loss
    calls = {"n": 0}

    def nan_at_step_3(self, *a, **k):
        calls["n"] += 1
        loss = real_loss(self, *a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Decoder, "loss", nan_at_step_3)
    with pytest.raises(FloatingPointError, match=r"decoder: loss is nan at step 3"):
        train_toy.main(TINY + ["--out", str(out), "--stages", "decoder", "--resume"])
    ck = torch.load(out / "decoder.pt", weights_only=True)
    assert ck["train"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())


def _train(done, out, *options, stages="decoder"):
    out.mkdir()
    shutil.copy(done / "clip.pt", out / "clip.pt")
    train_toy.main(TINY + ["--out", str(out), "--stages", stages, "--resume", *options])
    return torch.load(out / "decoder.pt", weights_only=True)


def test_precision_fp32_trains_exactly_as_without_autocast(finished_run, tmp_path, monkeypatch):
    fp32 = _train(finished_run[0], tmp_path / "fp32", "--precision", "fp32")
    monkeypatch.setattr(train_toy.diffusion, "autocast", lambda *a: contextlib.nullcontext())
    plain = _train(finished_run[0], tmp_path / "plain")
    assert fp32["train"]["history"] == plain["train"]["history"]
    for a, b in ((fp32["state_dict"], plain["state_dict"]),
                 (fp32["train"]["model"], plain["train"]["model"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_precision_bf16_runs_the_networks_in_bf16_and_the_rest_in_fp32(finished_run, tmp_path, monkeypatch):
    seen, training_losses = [], train_toy.diffusion.GaussianDiffusion.training_losses

    def record(self, net, *args, **kwargs):  # the dtype of the network output the loss is computed from
        def recorded(*a, **k):
            seen.append((out := net(*a, **k)).dtype)
            return out
        return training_losses(self, recorded, *args, **kwargs)

    monkeypatch.setattr(train_toy.diffusion.GaussianDiffusion, "training_losses", record)
    # the upsampler degrades its conditioning inside its loss: that stays fp32 too
    bf16 = _train(finished_run[0], tmp_path / "bf16", "--precision", "bf16", stages="decoder,up1")
    fp32 = _train(finished_run[0], tmp_path / "fp32", "--precision", "fp32")
    assert seen == [torch.float32] * (3 * STEPS)
    assert all(v.dtype == torch.float32 for v in bf16["state_dict"].values() if v.is_floating_point())
    assert bf16["train"]["history"] != fp32["train"]["history"]  # bf16 did run
    assert bf16["train"]["history"] == pytest.approx(fp32["train"]["history"], rel=0.05)


def test_an_unknown_precision_is_refused_naming_the_flag(tmp_path):
    with pytest.raises(SystemExit, match=re.escape("--precision fp16: must be one of auto, fp32, bf16")):
        train_toy.main(TINY + ["--out", str(tmp_path), "--precision", "fp16"])


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "a_file").write_text("")  # root ignores permissions; nothing can be made under a file
    with pytest.raises(SystemExit, match="cannot write to .*a_file/run .*pass --out a writable folder"):
        train_toy.main(TINY + ["--out", str(tmp_path / "a_file" / "run")])


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(finished_run, tmp_path, monkeypatch):
    shutil.copy(finished_run[0] / "clip.pt", tmp_path / "clip.pt")
    real_save, saves = torch.save, []

    def disk_fills_at_the_second_checkpoint(obj, f, *a, **k):
        saves.append(str(f))
        if len(saves) == 2:
            Path(f).write_bytes(b"half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                               "writing file data/12: file write failed")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(train_toy.torch, "save", disk_fills_at_the_second_checkpoint)
    with pytest.raises(OSError, match=r"cannot write .*decoder\.pt \(.*file write failed; \d+ MiB free "
                                      r"there\)\. The files written before are kept"):
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume"])
    assert saves == [str(tmp_path / "decoder.pt.tmp")] * 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["clip.pt", "decoder.pt"]
    assert torch.load(tmp_path / "decoder.pt", weights_only=True)["train"]["step"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_gloo_two_processes(finished_run, tmp_path):
    done, _ = finished_run
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(REPO / "train_toy.py"),
           *TINY, "--stages", "clip,prior", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = torch.load(out / "prior.pt", weights_only=True)
    assert ck["train"]["step"] == STEPS
    assert "prior step 4/4" in proc.stdout and "evaluation skipped" in proc.stdout
    # CLIP: both processes see the whole batch, so the averaged gradient is one process's
    two, one = (torch.load(d / "clip.pt", weights_only=True)["state_dict"] for d in (out, done))
    assert all(torch.allclose(two[k], one[k], atol=1e-5) for k in one)


def test_data_sizes_load_what_the_stages_need():
    cfg = train_config.Config()
    assert cfg.data_sizes(["clip"]) == (32, 64, 128)  # Shapes renders every size
    cfg.data = "folder:photos"
    assert [cfg.data_sizes(s) for s in (["clip", "decoder"], ["up1"], ["decoder", "up2"])] == [
        (32,), (32, 64), (32, 64, 128)]
    for cfg.data in ("fashion_mnist:x", "cifar10:x"):  # 32x32 only
        assert cfg.data_sizes(list(train_config.STAGES)) == (32,)


def test_a_labelled_real_set_evaluates_on_its_held_out_split_with_its_own_classifier(tmp_path, monkeypatch):
    from test_real_data import write_idx_set

    import real_data
    write_idx_set(tmp_path / "fashion", n_train=48, n_test=12)
    opened, fits, real_open, fit = [], [], real_data.open_dataset, real_data.ClassEvaluator.fit.__func__
    monkeypatch.setattr(real_data, "open_dataset",
                        lambda *a, **k: opened.append(k["train"]) or real_open(*a, **k))
    monkeypatch.setattr(real_data.ClassEvaluator, "fit",
                        classmethod(lambda cls, *a, **k: fits.append(1) or fit(cls, *a, steps=2)))
    args = TINY + ["--out", str(tmp_path / "run"), "--data", f"fashion_mnist:{tmp_path / 'fashion'}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = train_toy.main(args)
    assert opened[0] is True and False in opened  # the training split for training, the test split to score
    assert "up1: skipped, the data has no 64x64 images" in printed.getvalue()
    assert report["n"] == 4 and report["class_accuracy_32"]["all"]["n"] == 4
    for key in ("class_accuracy_real", "prior_retrieval"):
        assert 0 <= report[key]["all"]["acc"] <= 1
    assert 0 <= report["classifier_test_accuracy"] <= 1 and report["fd_classifier"] >= 0
    assert (tmp_path / "run" / "samples_per_class_32.png").exists() and len(fits) == 1
    with contextlib.redirect_stdout(io.StringIO()):
        train_toy.main(args + ["--stages", "decoder", "--resume"])  # the saved classifier is read back
        assert len(fits) == 1
        train_toy.main(args + ["--stages", "decoder", "--overwrite"])  # and trained afresh
    assert len(fits) == 2


def test_a_folder_of_large_images_trains_the_whole_cascade(tmp_path):
    from test_real_data import write_folder

    import real_data
    write_folder(tmp_path / "photos", [128] * 24)
    out, printed = tmp_path / "run", io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = train_toy.main(TINY + ["--out", str(out), "--data", f"folder:{tmp_path / 'photos'}"])
    assert "skipped" not in printed.getvalue()
    assert all((out / f"{name}.pt").exists() for name in ("up1", "up2"))
    held = real_data.ImageFolderCaptions(tmp_path / "photos", train=False, seed=0)
    assert (out / "samples_128.png").exists() and report["n"] == len(held) > 0  # the held-out captions
