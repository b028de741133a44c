import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cosdpo import score_items
from cosdpo.cli import app
from cosdpo.data import RankingSet
from cosdpo.evaluation.front import ndcg_report, score_base, score_conditioned
from cosdpo.training.ltr import FinetuneConfig, WeightCOSTask, finetune

from .conftest import TINY

FT = dict(objectives=("quality1", "quality2"), batch_size=4, lr=3e-3, **TINY)


@pytest.fixture(scope="module")
def wcos(tiny_fold, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("wcos") / "m"
    return finetune(tiny_fold, tiny_base, out, FinetuneConfig(epochs=6, beta=0.5, **FT))[0], out


@pytest.fixture(scope="module")
def tcos(tiny_fold, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("tcos") / "m"
    return finetune(tiny_fold, tiny_base, out, FinetuneConfig(epochs=6, method="tcos", **FT))[0], out


def test_linear_transformation_identity_on_a_trained_model(tiny_fold, wcos):
    model, _ = wcos
    test = RankingSet.load(tiny_fold, "test", model.schema)
    base = score_base(model.base, test)
    grid = np.array([[1.0, 0.0], [0.3, 0.7]])
    trained = score_conditioned(model, test, grid, base)
    np.testing.assert_array_equal(score_conditioned(model, test, grid, base, beta_prime=0.5), trained)  # beta' = beta
    for b in (0.1, 2.0, 7.0):
        served = score_conditioned(model, test, grid, base, beta_prime=b)
        np.testing.assert_allclose(served, base + (0.5 / b) * (trained - base), rtol=1e-5, atol=1e-6)
    # as beta' grows, the main objective's NDCG@10 moves toward the base model's
    main = lambda s: ndcg_report(test, s)["main"]  # noqa: E731
    gaps = [
        abs(main(score_conditioned(model, test, [[0.5, 0.5]], base, beta_prime=b)[0]) - main(base))
        for b in (0.5, 4.0, 1e7)
    ]
    assert gaps[0] > 0.005 and gaps[1] < gaps[0] and gaps[2] < 1e-9


def test_serving_api_takes_a_temperature(wcos):
    model, _ = wcos
    rows = np.random.default_rng(0).random((6, 136)) * 50
    base = score_items(model.base, rows)
    s, s2 = score_items(model, rows, [0.5, 0.5]), score_items(model, rows, [0.5, 0.5], beta_prime=2.0)
    np.testing.assert_allclose(s2, base + 0.25 * (s - base), rtol=1e-5, atol=1e-6)
    for bad, match in ((0.0, "> 0"), (-1.0, "> 0"), (float("inf"), "finite"), ([0.5, 2.0], "one temperature")):
        with pytest.raises(ValueError, match=match):
            score_items(model, rows, [0.5, 0.5], beta_prime=bad)


def test_temperature_cos_scale_is_applied_outside_the_network(tcos):
    model, _ = tcos
    rows = np.random.default_rng(1).random((7, 136)) * 50
    base = score_items(model.base, rows)
    w = [0.4, 0.6]
    s = score_items(model, rows, w, beta_prime=[0.5, 2.0])
    # same direction beta_hat, three times the scale: a third of the deviation
    np.testing.assert_allclose(
        score_items(model, rows, w, beta_prime=[1.5, 6.0]) - base, (s - base) / 3, rtol=1e-4, atol=1e-6
    )
    # a different direction is a different input: not a rescaling
    other = score_items(model, rows, w, beta_prime=[2.0, 0.5]) - base
    assert not np.allclose(other / np.linalg.norm(other), (s - base) / np.linalg.norm(s - base), atol=1e-3)
    with pytest.raises(ValueError, match="3 temperatures for 2 objectives"):
        score_items(model, rows, w, beta_prime=[1.0, 1.0, 1.0])


def test_temperatures_are_drawn_log_uniform_and_reproducibly(tiny_fold, tiny_base):
    cfg = FinetuneConfig(method="tcos", beta_range=(0.2, 5.0), **FT)
    task = WeightCOSTask(cfg, None)
    draws = torch.stack([task.temperatures(s) for s in range(2000)]).numpy()
    assert draws.shape == (2000, 2) and draws.min() >= 0.2 and draws.max() <= 5.0
    logs = np.log(draws)  # log-uniform: quartiles of log beta evenly spaced
    np.testing.assert_allclose(
        np.quantile(logs, [0.25, 0.5, 0.75]), np.log(0.2) + np.array([0.25, 0.5, 0.75]) * np.log(25), atol=0.1
    )
    assert torch.equal(task.temperatures(17), WeightCOSTask(cfg, None).temperatures(17))
    assert WeightCOSTask(FinetuneConfig(**FT), None).temperatures(3) is None
    for bad in ((0.0, 1.0), (2.0, 1.0), (1.0,)):
        with pytest.raises(ValueError, match="beta_range"):
            FinetuneConfig(method="tcos", beta_range=bad, **FT)


def test_front_command_temperatures(tiny_fold, wcos, tcos, tmp_path):
    runner = CliRunner()

    def run(model_dir, *extra):
        return runner.invoke(
            app,
            [
                "ltr",
                "front",
                "--model",
                str(model_dir),
                "--data",
                str(tiny_fold),
                "--out",
                str(tmp_path / "f"),
                "--grid",
                "3",
                *extra,
            ],
        )

    assert run(wcos[1], "--beta-prime", "2").exit_code == 0
    assert run(tcos[1], "--beta-prime", "0.5,2").exit_code == 0
    for model_dir, extra, message in (
        (wcos[1], ["--beta-prime", "1,2"], "one temperature"),
        (wcos[1], ["--beta-prime", "0"], "> 0"),
        (tcos[1], ["--beta-prime", "1,2,3"], "3 temperatures"),
        (tcos[1], ["--beta-prime", "x"], "comma-separated numbers"),
    ):
        res = run(model_dir, *extra)
        assert res.exit_code == 2 and message in res.output, res.output
