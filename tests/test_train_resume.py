"""What --resume and the evaluation refuse to mix, what a non-finite gradient stops, and what else a run
folder must refuse: train_toy.py on tiny settings (tiny_run.TINY), from copies of one finished run."""

import re
import shutil

import pytest
import torch
from tiny_run import TINY

import train_config
import train_toy
from decoder import Decoder


def _copy(done, out, *names):
    out.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(done / name, out / name)


def test_an_infinite_gradient_under_a_finite_loss_stops_before_the_next_checkpoint(finished_run, tmp_path,
                                                                                     monkeypatch):
    _copy(finished_run[0], tmp_path, "clip.pt")
    real_loss, calls = Decoder.loss, [0]

    def infinite_gradient_at_step_3(self, *a, **k):
        calls[0] += 1
        loss = real_loss(self, *a, **k)
        w = next(self.parameters()).flatten()[0]
        # sqrt(w - w) adds 0 to the loss, and d/dw sqrt(0) = inf: clipping then turns the weights NaN
        return loss + (w - w.detach()).sqrt() if calls[0] == 3 else loss

    monkeypatch.setattr(Decoder, "loss", infinite_gradient_at_step_3)
    with pytest.raises(FloatingPointError, match=r"decoder: gradient norm is (inf|nan) at step 3"):
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume"])
    ck = torch.load(tmp_path / "decoder.pt", weights_only=True)
    assert ck["train"]["step"] == 2  # step 4's checkpoint, of NaN weights, was never written
    assert all(torch.isfinite(v).all() for v in [*ck["state_dict"].values(), *ck["train"]["model"].values()])


@pytest.mark.parametrize("option, value, refused", [
    ("--opt_decoder.beta2", "0.5", "--opt_decoder.beta2 0.999 (now 0.5)"),  # AdamW's state holds the old one
    ("--opt_decoder.lr", "0.01", "--opt_decoder.lr 0.003 (now 0.01)"),
    ("--seed", "5", "--seed 0 (now 5)"),
    ("--train_size", "40", "--train_size 48 (now 40)"),
])
def test_resuming_under_other_training_options_is_refused(finished_run, tmp_path, option, value, refused):
    _copy(finished_run[0], tmp_path, "clip.pt", "decoder.pt")
    before = (tmp_path / "decoder.pt").read_bytes()
    with pytest.raises(SystemExit, match=re.escape(f"decoder.pt was trained with {refused}: pass those")):
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume", option, value])
    assert (tmp_path / "decoder.pt").read_bytes() == before


def test_more_steps_resume_a_finished_stage(finished_run, tmp_path, capsys):
    _copy(finished_run[0], tmp_path, "clip.pt", "decoder.pt")
    train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume",
                           "--opt_decoder.steps", "6"])
    assert "decoder: resumed at step 4/6" in capsys.readouterr().out
    assert torch.load(tmp_path / "decoder.pt", weights_only=True)["train"]["step"] == 6


def _another_clip(path):
    ck = torch.load(path, weights_only=True)
    key = next(iter(ck["state_dict"]))
    ck["state_dict"][key] = ck["state_dict"][key] + 1e-3  # one tensor moved: another CLIP
    torch.save(ck, path)


def test_stages_trained_on_another_clip_are_refused_on_resume_and_skip_the_evaluation(finished_run, tmp_path,
                                                                                      capsys):
    _copy(finished_run[0], tmp_path, "clip.pt", "prior.pt", "decoder.pt")
    _another_clip(tmp_path / "clip.pt")
    other = "was trained on another CLIP than the clip.pt beside it: pass --overwrite --stages {}"
    with pytest.raises(SystemExit, match=re.escape("decoder.pt " + other.format("decoder"))):
        train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "decoder", "--resume"])
    train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "", "--resume"])  # no stage trains
    skipped = (f"evaluation skipped: prior.pt, decoder.pt trained on another CLIP than "
               f"{tmp_path / 'clip.pt'}; retrain with --overwrite --stages prior,decoder")
    assert skipped in capsys.readouterr().out
    assert not (tmp_path / "unclip.pt").exists()  # never assembled from the mismatched stages


def test_files_set_aside_by_a_killed_overwrite_are_a_run_to_resume_or_overwrite(tmp_path):
    (tmp_path / "decoder.pt.old").write_bytes(b"set aside by an --overwrite that was killed")
    with pytest.raises(SystemExit, match=r"already holds decoder\.pt\.old\. Pass --resume"):
        train_toy.main(TINY + ["--out", str(tmp_path)])


def test_more_processes_than_the_seed_streams_keep_apart_are_refused():
    with pytest.raises(SystemExit, match="torchrun with 11 processes: train_toy.py takes at most 10"):
        train_config.check_config(train_config.Config(), list(train_config.STAGES), world=11)


def test_a_report_set_aside_stays_aside_once_a_stage_saved_and_others_files_are_left_alone(finished_run,
                                                                                          tmp_path, capsys):
    _copy(finished_run[0], tmp_path, "clip.pt", "prior.pt", "decoder.pt", "report.json", "unclip.pt")
    (tmp_path / "notes.txt.old").write_text("the user's")  # not set aside by the run: never touched
    (tmp_path / "up1.pt.old").write_bytes(b"set aside by an earlier run")
    old = {n: (tmp_path / n).read_bytes() for n in ("report.json", "unclip.pt")}
    train_toy.main(TINY + ["--out", str(tmp_path), "--stages", "clip", "--overwrite",
                           "--opt_clip.lr", "3e-3"])
    assert "evaluation skipped: prior.pt, decoder.pt trained on another CLIP" in capsys.readouterr().out
    for name, data in old.items():  # the old pipeline's, beside a new CLIP: kept, but not as this run's
        assert not (tmp_path / name).exists() and (tmp_path / f"{name}.old").read_bytes() == data
    assert (tmp_path / "notes.txt.old").exists() and not (tmp_path / "notes.txt").exists()
    assert (tmp_path / "up1.pt.old").exists() and not (tmp_path / "up1.pt").exists()
