import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cosdpo.data import RankingSet
from cosdpo.evaluation.front import score_base, score_conditioned
from cosdpo.training.compare import CompareConfig, compare, format_table, soup
from cosdpo.training.ltr import FinetuneConfig, finetune, modpo_margins

from .conftest import TINY

FT = dict(objectives=("quality1", "quality2"), batch_size=8, epochs=2, **TINY)


@pytest.fixture(scope="module")
def singles(tiny_fold, tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("singles")
    return [
        finetune(
            tiny_fold,
            tiny_base,
            out / f"e{k}",
            FinetuneConfig(method="ls", fixed_weights=tuple(np.eye(2)[k]), penalty=0.0, **FT),
        )[0]
        for k in range(2)
    ]


def test_soup_at_a_corner_is_that_model(tiny_fold, singles):
    test = RankingSet.load(tiny_fold, "test", singles[0].schema)
    for k in range(2):
        w = np.eye(2)[k]
        np.testing.assert_array_equal(
            score_conditioned(soup(singles, w), test, [w])[0], score_conditioned(singles[k], test, [w])[0]
        )
    mid = soup(singles, [0.25, 0.75])
    for name, p in mid.net.state_dict().items():
        torch.testing.assert_close(
            p, 0.25 * singles[0].net.state_dict()[name] + 0.75 * singles[1].net.state_dict()[name]
        )
    assert not np.array_equal(
        score_conditioned(mid, test, [[0.25, 0.75]])[0], score_conditioned(singles[0], test, [[1, 0]])[0]
    )


def test_modpo_with_one_objective_is_lipo(tiny_fold, tiny_base, tmp_path):
    one = dict(FT, objectives=("quality1",))
    single, _ = finetune(
        tiny_fold, tiny_base, tmp_path / "lipo", FinetuneConfig(method="ls", fixed_weights=(1.0,), penalty=0.0, **one)
    )
    finetune(
        tiny_fold,
        tiny_base,
        tmp_path / "modpo",
        FinetuneConfig(method="modpo", fixed_weights=(1.0,), **one),
        single_models=[single],
    )
    a, b = (
        load_file(str(tmp_path / "lipo" / "model.safetensors")),
        load_file(str(tmp_path / "modpo" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_modpo_margins_are_weighted_implicit_rewards(tiny_fold, singles):
    data = RankingSet.load(tiny_fold, "train", singles[0].schema)
    data.ref = score_base(singles[0].base, data)
    cfg = FinetuneConfig(method="modpo", fixed_weights=(0.3, 0.7), beta=2.0, **FT)
    s2 = score_conditioned(singles[1], data, [[0.3, 0.7]], data.ref)[0]
    np.testing.assert_allclose(modpo_margins(singles, data, cfg), 0.7 * 2.0 * (s2 - data.ref), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="single-objective models"):
        modpo_margins(None, data, cfg)


def test_fixed_weight_options_are_checked():
    with pytest.raises(ValueError, match="only by"):
        FinetuneConfig(method="ls", **FT)
    assert FinetuneConfig(fixed_weights=(0.5, 0.5), **FT).method == "ls"  # one w given: its DPO-LS model
    with pytest.raises(ValueError, match="only by"):
        FinetuneConfig(method="tcos", fixed_weights=(0.5, 0.5), **FT)
    with pytest.raises(ValueError, match="simplex"):
        FinetuneConfig(method="ls", fixed_weights=(0.5, 0.6), **FT)
    with pytest.raises(ValueError, match="unknown methods"):
        CompareConfig(FinetuneConfig(**FT), methods=("wcos", "pareto"))


def test_compare_writes_every_method_side_by_side(tiny_fold, tiny_base, tmp_path):
    same = CompareConfig(FinetuneConfig(**FT), grid=5, budget_ratio=0)  # the paper's rule: the same budget each
    result = compare(tiny_fold, tiny_base, tmp_path / "c", same)
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert list(saved["methods"]) == ["wcos", "ls", "soup", "modpo"] and len(saved["weights"]) == 5
    for f in saved["methods"].values():
        assert {"hypervolume", "main_ndcg", "train_seconds", "trainable_params", "points", "weights"} <= set(f)
        assert np.asarray(f["points"]).shape == (5, 2) and f["train_seconds"] > 0
    m = saved["methods"]
    per_model = m["wcos"]["trainable_params"] - 2 * 16  # the baselines' networks have no w input
    assert m["ls"]["trainable_params"] == 5 * per_model and m["soup"]["trainable_params"] == 2 * per_model
    assert m["modpo"]["trainable_params"] == 7 * per_model
    assert (tmp_path / "c" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "DPO-LS" in format_table(result) and "hypervolume" in format_table(result)
    with pytest.raises(FileExistsError):
        compare(tiny_fold, tiny_base, tmp_path / "c", same)
    # the same budget per model: every model makes as many steps as the conditioned one
    assert (
        m["ls"]["train_steps"] == 5 * m["wcos"]["train_steps"]
        and m["soup"]["train_steps"] == 2 * m["wcos"]["train_steps"]
    )
    assert m["modpo"]["train_steps"] == 7 * m["wcos"]["train_steps"] and "same training budget" in saved["budget_rule"]


def test_budget_ratio_sizes_the_conditioned_model_by_the_baselines_steps(tiny_fold, tiny_base, tmp_path):
    cfg = CompareConfig(FinetuneConfig(**FT), methods=("wcos", "ls"), grid=3, budget_ratio=0.5)
    saved = compare(tiny_fold, tiny_base, tmp_path / "c", cfg)
    m = saved["methods"]
    assert list(m) == ["wcos", "ls"] and m["wcos"]["train_steps"] == round(0.5 * m["ls"]["train_steps"])
    assert "0.5 of the total optimizer steps of DPO-LS's front" in saved["budget_rule"]
    with pytest.raises(ValueError, match=">= 0"):
        CompareConfig(FinetuneConfig(**FT), grid=3, budget_ratio=-0.1)
    alone = CompareConfig(FinetuneConfig(**FT), methods=("wcos",), grid=3)  # no baselines to size it by
    assert CompareConfig(FinetuneConfig(**FT)).budget_ratio == 0.3 and "same training budget" in alone.budget_rule()
