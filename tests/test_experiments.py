"""experiments.py on a tiny run that train_toy.py trains for a few steps: every experiment end to
end (tables, JSON, the extra stages it trains in sub-folders), and the scorers on known inputs."""

import dataclasses
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import experiments
import metrics
import scoring
import train_config
import train_toy
from prior import DiffusionPrior, DiffusionPriorConfig
from toy_data import ATTRIBUTES, parse_caption, render, sample_scene

TINY = ("--train_size 48 --eval_size 4 --log_every 2 --ckpt_every 2 "
        "--clip.vision_width 32 --clip.vision_layers 1 --clip.transformer_width 32 "
        "--clip.transformer_layers 1 --clip.embed_dim 16 "
        "--prior.width 32 --prior.layers 1 --prior.heads 1 --ar_prior.width 32 --ar_prior.layers 1 "
        "--ar_prior.heads 1 --ar_prior.pca_dims 4 --ar_prior.buckets 16 "
        "--decoder.channels 8 --decoder.channel_mults 1,2,2 --decoder.head_channels 8 "
        "--decoder.text_layers 1 --decoder.text_width 16 --decoder.text_heads 1 --decoder.num_res_blocks 1 "
        "--up1.channels 8 --up2.channels 8 "
        "--sampling.prior_steps 2 --sampling.decoder_steps 2 --sampling.up_steps 2,2").split()
for _stage in ("clip", "prior", "ar_prior", "decoder", "up1", "up2"):
    TINY += [f"--opt_{_stage}.steps", "4", f"--opt_{_stage}.batch", "4"]
FAST = ("--n 4 --steps 2,3 --scales 1,2 --per-caption 2 --prior-steps 2 --decoder-steps 2 "
        "--prior-recipes 2x0.001,6x0.003").split()
ROWS = {"prior": ["real renders (reference)", "(a) diffusion prior", "(b) AR prior",
                  "(c) z_t as z_i, no prior (zero-shot)", "(d) caption only, no z_i"],
        "curves": ["clip", "prior", "decoder", "up1", "up2"],
        "guidance": ["real renders (reference)", "decoder s=1, prior s=1", "decoder s=2, prior s=1",
                     "decoder s=3, prior s=1", "decoder s=3, prior s=3"],
        "binding": ["real renders (reference)"] + [f"{d}, {n}" for d in (
            "unCLIP: prior z_i and caption", "caption only (GLIDE)") for n in ("one object", "two objects")],
        "holdout": ["real renders of held-out pairs (reference)", "seen pairs", "held-out pairs",
                    "held-out pairs, z_t as z_i (no prior)"]}
COMPONENTS = {  # table title: its rows
    "CLIP zero-shot, per attribute": ["argmax cos over captions that differ only in the attribute"],
    "Prior": ["true z_i (retrieval ceiling)", "z_t as z_i (no prior)", "mean z_i of the bank",
                        "a bank render with the named attributes (an exact sample given y)",
                        "diffusion prior", "AR prior (exp_ar_prior/ar_prior.pt)"],
    "Decoder from the true z_i": ["real renders (reference)", "true z_i and the caption, s=1",
                                            "true z_i and the caption, s=2", "true z_i and the caption, s=3",
                                            "true z_i, no caption, s=3"],
    "Upsamplers on true low-res renders": ["32->64: bicubic", "32->64: up1, 2 DDIM steps",
                                                     "64->128: bicubic", "64->128: up2, 2 DDIM steps"]}


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "toy"
    train_toy.main(TINY + ["--out", str(out), "--holdout", "purple triangle"])
    return out


def test_every_experiment_writes_its_table_and_keeps_the_run(run):
    own = {p.name: digest(p) for p in run.iterdir() if p.is_file()}
    records = experiments.main(["all", "--run", str(run), *FAST, "--bank", "64"])
    assert [r["experiment"] for r in records] == list(experiments.EXPERIMENTS)
    check_components(records.pop(), run)  # last, so that it finds the AR prior `prior` trained
    check_variance(records.pop(1), run)
    check_diversity(records.pop(2), run)
    check_recipes(records.pop(4), run)
    for record in records:
        name = record["experiment"]
        assert [row["row"] for row in record["rows"]] == ROWS[name], name
        saved = json.loads((run / "experiments" / f"{name}.json").read_text())
        assert saved["rows"] == json.loads(json.dumps(record["rows"]))
        text = (run / "experiments" / f"{name}.md").read_text()
        assert record["command"] in text and "seed 0" in text and "machine:" in text
        assert text.count("\n|") == len(ROWS[name]) + 2  # header, rule, one line per row
        for row in record["rows"][1:] if name != "curves" else ():  # generated rows: finite metrics
            for key in ("all", "CLIP score", "FD_CLIP", "seconds"):
                assert math.isfinite(row[key]) and (key != "all" or 0 <= row[key] <= 1), (name, key)
    assert records[0]["command"].startswith("python experiments.py prior --run")
    check_curves(records[4], run)
    assert Image.open(run / "experiments" / "guidance.png").size == (3 * 380, 300)
    assert Image.open(run / "experiments" / "binding.png").size[0] > 4 * 128
    assert "purple triangle" in records[3]["settings"]
    guidance = records[1]["rows"]
    assert all(0 <= r["unnamed varied"] <= 1 and r["z_i spread"] >= 0 for r in guidance)
    check_paired(guidance, base=1)
    # the extra stages went to sub-folders, trained under the run's config; the run is untouched
    fixed = torch.load(run / "exp_fixed_var" / "decoder.pt", weights_only=True)
    assert fixed["config"]["learn_sigma"] is False and fixed["config"]["out_channels"] == 3
    assert fixed["config"]["channels"] == 8 and fixed["train"]["step"] == 4
    glide = torch.load(run / "exp_text_decoder" / "decoder.pt", weights_only=True)
    assert glide["config"]["p_drop_image"] == 1 and glide["config"]["p_drop_text"] == 0.2
    binding = records[2]["rows"]
    for row in binding[2::2]:  # two objects: bound if independent = (one object's colour+shape)^2
        assert 0 <= row["bound"] + row["swapped"] <= 1 and row["bound if independent"] == pytest.approx(
            binding[binding.index(row) - 1]["colour+shape"] ** 2)
    ar = torch.load(run / "exp_ar_prior" / "ar_prior.pt", weights_only=True)
    assert ar["config"]["pca_dims"] == 4 and ar["train"]["step"] == 4
    assert {p.name: digest(p) for p in run.iterdir() if p.is_file()} == own


def check_variance(record, run):
    """Both tables of `variance`, the bits/dim of each decoder, the chart."""
    nll, sampling = record["tables"].values()
    assert [r["row"] for r in sampling] == ["real renders (reference)"] + [
        f"{v} variance, {s} steps" for v in ("learned-range", "fixed") for s in (2, 3)]
    assert [r["row"] for r in nll] == ["learned-range variance", "fixed variance"]
    # an untrained 4-step decoder is far from 8 bits/dim's uniform code but finite and positive
    assert all(0 < r["bits/dim"] < 100 for r in nll) and nll[0]["bits/dim"] != nll[1]["bits/dim"]
    assert "bits/dim from every t of the 1000 steps" in record["settings"]
    assert Image.open(run / "experiments" / "variance.png").size == (760, 300)


def check_diversity(record, run):
    """The data, the exact denoiser, each prior recipe (the run's own: 4 steps at lr 3e-3) at best of
    2 and 1, the AR prior; the recipes trained in sub-folders; the chart."""
    priors = ["diffusion prior, 2 steps at lr 0.001", "diffusion prior, 4 steps at lr 0.003 (the run's)",
              "diffusion prior, 6 steps at lr 0.003", "AR prior"]
    assert [r["row"] for r in record["rows"]] == ["real renders (the data)", "exact denoiser of the "
                                                  "bank's renders, 2 steps"] + [
        f"{p}, best of {n}" for p in priors for n in (2, 1)]
    assert record["rows"][0]["spread / data"] == 1
    for row in record["rows"][1:]:
        assert row["spread / data"] >= 0 and 0 <= row["all"] <= 1 and -1 <= row["z_i cos"] <= 1, row
    assert all(0 <= row["stack all"] <= 1 for row in record["rows"][2:])
    for sub, steps in (("exp_prior_2x0.001", 2), ("exp_prior_6x0.003", 6)):
        ckpt = torch.load(run / sub / "prior.pt", weights_only=True)
        assert ckpt["train"]["step"] == steps and ckpt["config"]["width"] == 32
    assert Image.open(run / "experiments" / "diversity.png").size == (2 * 380, 300)  # best of 2, of 1


def test_exact_denoiser_samples_its_points():
    """The prior's sampler, given the exact x_0-prediction for data uniform over 4 points, returns
    those points (each sample within 1e-3 of one) and each about a quarter of the time."""
    torch.manual_seed(0)
    prior = DiffusionPrior(DiffusionPriorConfig(clip_dim=8, text_width=16, width=16, layers=1, heads=1))
    points = F.normalize(torch.randn(4, 8), dim=-1)
    z = scoring.exact_prior_samples(prior.diffusion, [points, points[:1]], k=400, steps=64, seed=0)
    cos = z @ points.T  # [800, 4]
    assert cos.max(1).values.min() > 1 - 1e-3
    counts = torch.bincount(cos[:400].argmax(1), minlength=4)
    assert counts.min() > 60 and counts.max() < 140, counts  # 100 each; binomial sd 8.7
    assert (cos[400:].argmax(1) == 0).all()


def check_recipes(record, run):
    """Each decoder recipe trained anew with snapshots, scored at each: rows in step order,
    training seconds growing; the run's own recipe retrains the run's decoder to the bit."""
    steps = {"the run's recipe": (2, 4), "eps prediction": (2, 4), "x0 prediction": (2, 4),
             "batch 8, half the steps": (2,)}  # twice the run's batch 4
    assert [r["row"] for r in record["rows"]] == [f"{k}, step {s}" for k, v in steps.items() for s in v]
    for rows in (record["rows"][0:2], record["rows"][2:4], record["rows"][4:6]):
        assert 0 < rows[0]["train seconds"] < rows[1]["train seconds"]
        assert all(0 <= r["all"] <= 1 and math.isfinite(r["FD_CLIP"]) for r in rows)
    for key, mean_type, trained in (("own", "v", 4), ("eps", "eps", 4), ("x0", "x0", 4), ("batch8", "v", 2)):
        ck = torch.load(run / f"exp_recipe_{key}" / "decoder_000002.pt", weights_only=True)
        assert set(ck) == {"config", "state_dict", "step", "seconds"} and ck["step"] == 2
        assert ck["config"]["mean_type"] == mean_type
        final = torch.load(run / f"exp_recipe_{key}" / "decoder.pt", weights_only=True)["train"]
        assert final["step"] == len(final["history"]) == trained and final["seconds"] >= ck["seconds"]
    ours, theirs = (torch.load(d / "decoder.pt", weights_only=True)["state_dict"]
                    for d in (run / "exp_recipe_own", run))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert Image.open(run / "experiments" / "recipes.png").size == (380, 300)


def check_curves(record, run):
    """One row and one panel per trained stage; the losses are the checkpoints' own histories."""
    for row in record["rows"]:
        history = torch.load(run / f"{row['row']}.pt", weights_only=True)["train"]["history"]
        assert row["steps"] == len(history) == 4
        assert row["loss, first 10%"] == pytest.approx(history[0])
        assert row["loss, last 10%"] == pytest.approx(history[-1])
    assert Image.open(run / "experiments" / "curves.png").size == (380 * len(record["rows"]), 300)


def check_components(record, run):
    """Every table and row of `components`, every figure a finite number in its range."""
    saved = json.loads((run / "experiments" / "components.json").read_text())
    assert saved["tables"] == json.loads(json.dumps(record["tables"]))
    assert {t: [r["row"] for r in rows] for t, rows in saved["tables"].items()} == COMPONENTS
    text = (run / "experiments" / "components.md").read_text()
    assert text.count("\n####") == 4 and text.count("\n|") == sum(len(r) + 2 for r in COMPONENTS.values())
    assert "seed 0" in text and "machine:" in text and "bank (retrieval, mean z_i): 64 renders" in text
    for rows in saved["tables"].values():
        for row in rows:
            assert all(math.isfinite(v) for k, v in row.items() if k != "row"), row
    (clip,), prior, decoder, ups = saved["tables"].values()
    assert set(clip) == {"row", *ATTRIBUTES, "seconds"} and all(0 <= clip[a] <= 1 for a in ATTRIBUTES)
    assert prior[0]["z_i cos"] == pytest.approx(1.0) and prior[1]["distinct sizes"] == 1  # z_t: one
    for row in prior[4:]:
        assert {"all", "z_i cos", "distinct sizes", "cos z_t, best of 1", "cos z_t, best of 2"} <= set(row)
        assert 1 <= row["distinct positions"] <= 2 and 0 <= row["all"] <= 1  # k = 2
    assert all({*ATTRIBUTES, "CLIP score"} <= set(row) for row in decoder)
    assert all(-1 <= row["z_i cos"] <= 1 and row["FD_CLIP"] >= 0 for row in decoder[1:])
    check_paired(decoder, base=1)
    for row in ups:
        assert row["PSNR"] > 15 and 0 < row["L1"] < 0.2 and 0 <= row["same reading"] <= 1, row
    for i in (1, 2):  # 4 rows (low-res, bicubic, upsampler, truth) of n / 2 = 2 images
        png = Image.open(run / "experiments" / f"components_up{i}.png")
        assert png.size[1] > 3 * png.size[0] / 2


def check_paired(rows, base):
    """rows[base] is guidance 1; the rows after it carry its paired CLIP-score difference."""
    assert all("CLIP score - s=1" not in row for row in rows[:base + 1])
    for row in rows[base + 1:]:
        gain = row["CLIP score"] - rows[base]["CLIP score"]  # the mean of the per-image differences
        assert row["CLIP score - s=1"] == pytest.approx(gain, abs=1e-9)
        assert row["paired SE"] >= 0


def test_psnr_and_zero_shot_scorer():
    x = torch.zeros(2, 3, 8, 8)
    assert metrics.psnr(x, x + 0.2).tolist() == pytest.approx([20.0, 20.0])  # 0.1 on [0, 1]
    assert metrics.psnr(x, x).isinf().all()
    rng = np.random.default_rng(0)
    attrs = [sample_scene(rng).attrs for _ in range(12)]
    assert all(parse_caption(scoring.full_caption(t)) == t for t in attrs)
    values = [(a, v) for a, vs in scoring.VALUES.items() for v in vs]

    def embed(named: list) -> torch.Tensor:  # a fake CLIP: one unit per attribute value
        return F.normalize(torch.tensor([[float(t[a] == v) for a, v in values] for t in named]), dim=-1)

    encode_text = lambda captions: (embed([parse_caption(c) for c in captions]),)
    assert scoring.zero_shot(encode_text, embed(attrs), attrs) == dict.fromkeys(ATTRIBUTES, 1.0)
    moved = [t | {"position": "center" if t["position"] != "center" else "top"} for t in attrs]
    scores = scoring.zero_shot(encode_text, embed(moved), attrs)  # images elsewhere: all wrong
    assert scores == dict.fromkeys(ATTRIBUTES, 1.0) | {"position": 0.0}


def test_trained_sub_stages_are_reused(run, monkeypatch):
    a = experiments.argparse.Namespace(run=run, train_steps=None, device="cpu")
    cfg = json.loads((run / "report.json").read_text())["config"]
    options = ["--stages", "decoder", "--decoder.learn_sigma", "false", "--decoder.out_channels", "3"]
    path = experiments.train_extra(a, cfg, "exp_fixed_var", "decoder", options)  # trained if missing
    before = digest(path)
    monkeypatch.setattr(train_toy, "main", lambda *a, **k: pytest.fail("retrained a finished stage"))
    assert experiments.train_extra(a, cfg, "exp_fixed_var", "decoder", options) == path
    assert digest(path) == before
    a.train_steps, calls = 6, []  # more steps than the file holds: train_toy resumes it
    monkeypatch.setattr(train_toy, "main", calls.append)
    experiments.train_extra(a, cfg, "exp_fixed_var", "decoder", options)
    (argv,) = calls
    last = lambda flag: argv[len(argv) - argv[::-1].index(flag)]  # argparse: the last one wins
    assert "--resume" in argv and last("--out") == str(path.parent) and last("--stages") == "decoder"
    assert last("--opt_decoder.steps") == "6" and last("--decoder.learn_sigma") == "false"


def test_refusals(run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("clip.pt", "prior.pt", "decoder.pt", "report.json"):
        shutil.copy(run / name, copy / name)
    (copy / "exp_fixed_var").mkdir()
    (copy / "exp_fixed_var" / "clip.pt").write_bytes(b"another clip")
    with pytest.raises(SystemExit, match="differs from"):
        experiments.main(["variance", "--run", str(copy), *FAST])
    report = json.loads((copy / "report.json").read_text())
    report["config"]["holdout"] = ""
    (copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit, match="holds out no"):
        experiments.main(["holdout", "--run", str(copy), *FAST])
    with pytest.raises(SystemExit, match="pink hexagon"):
        experiments.main(["holdout", "--run", str(copy), *FAST, "--holdout", "pink hexagon"])
    with pytest.raises(SystemExit, match="need --n, --per-caption"):
        experiments.main(["prior", "--run", str(copy), "--n", "1"])
    with pytest.raises(SystemExit, match="no run folder"):
        experiments.main(["prior", "--run", str(tmp_path / "nothing")])


def test_config_args_rebuild_the_saved_config():
    cfg, _ = train_toy.parse_args(["--holdout", "purple triangle,red circle", "--decoder.learn_sigma",
                                   "false", "--decoder.out_channels", "3", "--sampling.up_steps", "9,4",
                                   "--opt_prior.lr", "1e-5", "--quick"])
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as report.json holds it
    rebuilt, _ = train_toy.parse_args(train_config.config_args(saved))
    assert dataclasses.asdict(rebuilt) == dataclasses.asdict(cfg)
    assert dataclasses.asdict(rebuilt) != dataclasses.asdict(train_config.Config())
    # a run saved before a field existed rebuilds with the field's class default, what older code did,
    # not with a preset that sets it since (the decoder's toy_config: the 16x16 z_i map)
    del saved["decoder"]["map_resolutions"]
    older, _ = train_toy.parse_args(train_config.config_args(saved))
    assert train_config.Config().decoder.map_resolutions == (16,) and older.decoder.map_resolutions == ()
    assert older.opt_prior.lr == 1e-5  # the rest as saved
    assert older.tokenizer == "bpe"  # a saved config without the field: its CLIP's vocabulary names it
    del saved["tokenizer"]
    saved["clip"]["vocab_size"] = 259
    assert train_toy.parse_args(train_config.config_args(saved))[0].tokenizer == "byte"


def two_object_renders(n=12, seed=0, edit=lambda a, b: (a, b)):
    """Clean 32x32 renders of n two-object scenes after edit(left, right), and the named dicts
    of the unedited scenes' captions."""
    rng = np.random.default_rng(seed)
    images, named = [], []
    for _ in range(n):
        scene = sample_scene(rng, two_objects=True)
        images.append(render(dataclasses.replace(scene, objects=edit(*scene.objects)))[32])
        named.append({k: v for k, v in scene.attrs.items() if k.endswith(("colour", "shape"))})
    return torch.stack(images), named


def test_binding_scorer_on_renders():
    read = scoring.evaluator().read_pair
    x, named = two_object_renders()
    assert scoring.binding(read(x), named) == {
        "both colours": 1.0, "both shapes": 1.0, "bound": 1.0, "swapped": 0.0,
        "bound given both present": 1.0}
    swap = lambda a, b: (dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour))
    x, named = two_object_renders(edit=swap)
    assert scoring.binding(read(x), named) == {
        "both colours": 1.0, "both shapes": 1.0, "bound": 0.0, "swapped": 1.0,
        "bound given both present": 0.0}
    same = lambda a, b: (a, dataclasses.replace(b, colour=a.colour))  # one colour twice
    x, named = two_object_renders(edit=same)
    scores = scoring.binding(read(x), named)
    assert scores["both colours"] == 0 and scores["bound"] == 0 and scores["swapped"] == 0
    assert scores["bound given both present"] is None


def test_diversity_and_single_pair_scenes():
    captions, named, real = scoring.only_pair(("green", "cross"), 8, seed=3)
    assert all(n["colour"] == "green" and n["shape"] == "cross" for n in named)
    reads = scoring.evaluator().read(real)
    z = F.normalize(torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    varied = scoring.diversity(z, reads, k=4)
    assert varied["unnamed varied"] > 0.5 and varied["z_i spread"] > 0.5  # random scenes, vectors
    assert all(1 <= varied[f"distinct {u}s"] <= 4 for u in scoring.UNNAMED)
    assert varied["distinct positions"] > 1
    same = scoring.diversity(z[:1].expand(8, -1), [reads[0]] * 8, k=4)
    assert same == {"z_i spread": pytest.approx(0.0, abs=1e-6), "unnamed varied": 0.0, "distinct sizes": 1,
                    "distinct positions": 1, "distinct backgrounds": 1}
    orthogonal = scoring.diversity(torch.eye(4), reads[:4], k=4)  # 1 - cos = 1 for every pair
    assert orthogonal["z_i spread"] == pytest.approx(1.0)


def test_prior_recipes_are_parsed_and_checked():
    assert scoring.step_lr_pairs("1200x0.001, 6000x3e-3") == [(1200, 0.001), (6000, 0.003)]
    for bad in ("", "6000", "1x2x3", "0x0.1", "10x0", "10xnan", "ax0.1"):
        with pytest.raises(SystemExit, match="--prior-recipes"):
            scoring.step_lr_pairs(bad)


@pytest.mark.parametrize("flag, value", [("--steps", "1,10"), ("--nll-stride", "0"), ("--scales", "1,nan"),
                                         ("--decoder-steps", "0"), ("--prior-steps", "1"),
                                         ("--train-steps", "0"), ("--threads", "-2")])
def test_numbers_out_of_range_are_refused_before_any_work(tmp_path, flag, value):
    with pytest.raises(SystemExit, match="need --n, --per-caption"):
        experiments.main(["variance", "--run", str(tmp_path), flag, value])


def test_a_run_without_its_decoder_is_refused_with_what_to_train(run, tmp_path):
    shutil.copy(run / "clip.pt", tmp_path / "clip.pt")
    with pytest.raises(SystemExit, match=f"train the run with python train_toy.py --out {tmp_path}"):
        experiments.main(["curves", "--run", str(tmp_path)])


def test_all_says_which_experiment_it_cannot_do_and_runs_the_others(run, tmp_path, monkeypatch, capsys):
    def cannot(a, pipe, cfg):
        raise SystemExit("the run holds out no pair")

    def can(a, pipe, cfg):
        return [{"row": "measured", "all": 1.0}], "a note"
    monkeypatch.setattr(experiments, "EXPERIMENTS", {"holdout": ("Held out", cannot),
                                                     "curves": ("Curves", can)})
    records = experiments.main(["all", "--run", str(run), "--out", str(tmp_path), *FAST])
    assert [r["experiment"] for r in records] == ["curves"] and (tmp_path / "curves.md").exists()
    assert "holdout: skipped: the run holds out no pair" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="holds out no pair"):  # asked for by name, it still stops
        experiments.main(["holdout", "--run", str(run), "--out", str(tmp_path), *FAST])
