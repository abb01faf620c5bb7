"""Tests for unclip_cli.py, the command line `python unclip.py`: in-process and as processes, on a
one-file checkpoint of tiny random stages (tiny_pipeline.py), CPU, seeded."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipeline import parts

import unclip_cli
from unclip import UnCLIP, save_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipe():
    return UnCLIP(*parts())


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
    (["--out", "grid.jpg"], "--out must name a .png file"),
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
