import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cosdpo.cli import app

from .conftest import MSLR_SAMPLE, requires_shared

runner = CliRunner()
SMALL = ["--d-model", "16", "--heads", "2", "--layers", "1", "--no-progress", "--min-steps", "0"]


def ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_help_for_every_command():
    for cmd in ([], ["data", "synth"], ["ltr", "train-base"], ["ltr", "finetune"], ["ltr", "front"], ["demo"]):
        out = ok([*cmd, "--help"])
        assert "Usage" in out


def _check_front(path, objectives, n_points):
    front = json.loads((path / "front.json").read_text())
    for key in (
        "objectives",
        "weights",
        "points",
        "hypervolume",
        "reference_point",
        "main_ndcg",
        "base_point",
        "base_main_ndcg",
    ):
        assert key in front
    assert front["objectives"] == objectives
    assert np.asarray(front["points"]).shape == (n_points, len(objectives))
    assert np.allclose(np.asarray(front["weights"]).sum(1), 1)
    assert set(front["main_ndcg"]) >= {"mean", "std"}
    assert (path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return front


def test_cli_pipeline_on_synthetic_data(tmp_path):
    ok(["data", "synth", "--out", tmp_path / "d", "--queries", "40", "--seed", "2"])
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["test.txt", "train.txt", "vali.txt"]
    ok(["ltr", "train-base", "--data", tmp_path / "d", "--out", tmp_path / "b", "--epochs", "2", *SMALL])
    ok(
        [
            "ltr",
            "finetune",
            "--data",
            tmp_path / "d",
            "--base",
            tmp_path / "b",
            "--objectives",
            "quality1,url_clicks,dwell_time",
            "--out",
            tmp_path / "f",
            "--epochs",
            "2",
            "--param",
            "scratch",
            "--lr-schedule",
            "cosine",
            "--val-every",
            "2",
            "--patience",
            "0",
            *SMALL,
        ]
    )
    log = json.loads((tmp_path / "f" / "train_log.json").read_text())
    assert ["val" in r for r in log] == [False, True]  # --val-every 2
    groups = json.loads((tmp_path / "f" / "checkpoint" / "optimizer.json").read_text())["param_groups"]
    assert groups[0]["lr"] == pytest.approx(1e-3 / 2)  # --lr-schedule cosine: step 2 of 2 at cos(pi / 2)
    out = ok(
        [
            "ltr",
            "front",
            "--model",
            tmp_path / "f",
            "--data",
            tmp_path / "d",
            "--out",
            tmp_path / "fr",
            "--grid",
            "10",
            "--reference",
            "0.1,0.1,0.1",
        ]
    )
    assert "hypervolume" in out
    front = _check_front(tmp_path / "fr", ["quality1", "url_clicks", "dwell_time"], 10)  # H=2 lattice: 6 <= 10
    assert front["reference_point"] == [0.1, 0.1, 0.1]


FINETUNE = ["ltr", "finetune", "--data", "{bad}", "--base", "{tmp}", "--objectives", "quality1", "--out", "{tmp}/f"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["ltr", "train-base", "--data", "{bad}", "--out", "{tmp}/b"], "bad.txt:2: malformed line"),
        (["ltr", "train-base", "--data", "{tmp}/nothing", "--out", "{tmp}/b"], "no such file"),
        (["ltr", "front", "--model", "{tmp}", "--data", "{bad}", "--out", "{tmp}/o"], "not a model folder"),
        (
            [
                *FINETUNE,
                "--beta",
                "-1",
            ],
            "beta must be > 0",
        ),
        (
            [
                *FINETUNE,
                "--grades",
                "quality1",
            ],
            "expected NAME=SPEC",
        ),
        (
            [
                *FINETUNE,
                "--lr-schedule",
                "linear",
            ],
            "lr_schedule must be one of constant, cosine; got 'linear'",
        ),
        (
            [
                "ltr",
                "compare",
                "--data",
                "{bad}",
                "--base",
                "{tmp}",
                "--objectives",
                "quality1",
                "--out",
                "{tmp}/f",
                "--warmup-steps",
                "-1",
            ],
            "warmup_steps must be >= 0",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 qid:1 1:0.5\n1 qid:1 1:0.5 oops\n")
    res = runner.invoke(app, [a.format(tmp=tmp_path, bad=bad) for a in args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.slow
@requires_shared()
def test_real_mslr_sample_end_to_end(tmp_path):
    """Train, fine-tune and measure a front on the first 5,000 real MSLR-WEB10K lines."""
    ok(
        [
            "ltr",
            "train-base",
            "--data",
            MSLR_SAMPLE,
            "--out",
            tmp_path / "b",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            *SMALL,
        ]
    )
    ok(
        [
            "ltr",
            "finetune",
            "--data",
            MSLR_SAMPLE,
            "--base",
            tmp_path / "b",
            "--objectives",
            "quality1,url_clicks",
            "--out",
            tmp_path / "f",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            *SMALL,
        ]
    )
    ok(["ltr", "front", "--model", tmp_path / "f", "--data", MSLR_SAMPLE, "--out", tmp_path / "fr"])
    front = _check_front(tmp_path / "fr", ["quality1", "url_clicks"], 11)
    assert front["n_queries"] == 8 and 0 < front["hypervolume"] <= 1
    assert all(0 <= x <= 1 for p in front["points"] for x in p)


def test_synth_with_mslr_list_lengths(tmp_path):
    from cosdpo.data.letor import read_letor

    ok(["data", "synth", "--out", tmp_path / "d", "--queries", "300", "--lengths", "mslr"])
    sizes = np.concatenate(
        [
            np.unique(read_letor(tmp_path / "d" / f).qid, return_counts=True)[1]
            for f in ("train.txt", "vali.txt", "test.txt")
        ]
    )
    assert len(sizes) == 300 and 90 < sizes.mean() < 160 and sizes.max() > 300 and sizes.min() >= 1
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "e"), "--lengths", "web"])
    assert r.exit_code == 2 and "--lengths must be one of short, mslr" in r.output


def test_synth_keeps_a_fold_it_did_not_write_unless_told(tmp_path):
    fold = tmp_path / "Fold1"
    fold.mkdir()
    (fold / "train.txt").write_text("user data\n")
    r = runner.invoke(app, ["data", "synth", "--out", str(fold), "--queries", "10"])
    assert r.exit_code == 2 and "already holds train.txt" in r.output and "--overwrite" in r.output
    assert (fold / "train.txt").read_text() == "user data\n" and sorted(p.name for p in fold.iterdir()) == ["train.txt"]
    ok(["data", "synth", "--out", fold, "--queries", "10", "--overwrite"])
    assert (fold / "train.txt").read_text().startswith(tuple("01234")) and (fold / "test.txt").is_file()
