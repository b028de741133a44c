"""The LLM baselines beside Weight-COS-DPO: DPO-LS, DPO Soup and MO-DPO, and the comparison that trains them."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from cosdpo.evaluation.preference import sequence_scores  # noqa: E402
from cosdpo.models.llm import load_base, load_policy  # noqa: E402
from cosdpo.training.llm import build_policy, finetune_llm, load_split  # noqa: E402
from cosdpo.training.preference_task import PreferenceTask  # noqa: E402
from tests.tiny_llm import adapter_state, cfg_for, quiet  # noqa: E402


def test_soup_mixes_lora_updates_not_factors(tiny_llm, tiny_pairs, tmp_path):
    from cosdpo.training.llm_compare import soup_policy

    dirs = []
    for k, w in enumerate([(1.0, 0.0), (0.0, 1.0)]):
        finetune_llm(
            tiny_pairs, tmp_path / f"s{k}", cfg_for(tiny_llm, max_steps=3, method="ls", fixed_weights=w), log=quiet
        )
        dirs.append(tmp_path / f"s{k}")
    singles = [load_policy(d)[0] for d in dirs]

    def delta(policy, name="default"):
        layer = policy.model.base_model.model.model.layers[0].self_attn.q_proj
        return layer.get_delta_weight(name)

    w = (0.3, 0.7)
    mixed = soup_policy(dirs, w, load_base(str(tiny_llm))[0])
    expect = w[0] * delta(singles[0]) + w[1] * delta(singles[1])
    assert torch.allclose(delta(mixed, "soup"), expect, atol=1e-6)
    assert torch.allclose(mixed.hpt.prefix, w[0] * singles[0].hpt.prefix + w[1] * singles[1].hpt.prefix)
    corner = soup_policy(dirs, (1.0, 0.0), load_base(str(tiny_llm))[0])
    ids, mask = torch.tensor([[5, 17, 33, 9]]), torch.ones(1, 4, dtype=torch.long)
    assert torch.allclose(corner(ids, mask, [1.0, 0.0]), singles[0](ids, mask, [1.0, 0.0]), atol=1e-5)


def test_compare_config_refuses_bad_methods_before_training(tiny_llm):
    from cosdpo.training.llm_compare import LLMCompareConfig

    assert LLMCompareConfig(cfg_for(tiny_llm), methods=(" wcos", "soup ")).methods == ("wcos", "soup")
    with pytest.raises(ValueError, match="unknown methods \\['tcos'\\]"):  # ranking only
        LLMCompareConfig(cfg_for(tiny_llm), methods=("wcos", "tcos"))
    with pytest.raises(ValueError, match="leave method at wcos"):
        LLMCompareConfig(cfg_for(tiny_llm, method="ls", fixed_weights=(1.0, 0.0)))


def test_compare_with_a_mixed_lora_trains_plain_baselines(tiny_llm, tiny_pairs, tmp_path):
    """--lora-mix applies to Weight-COS-DPO only: DPO-LS's models are plain LoRA (half the LoRA size)."""
    from cosdpo.training.llm_compare import LLMCompareConfig, compare_llm

    cfg = LLMCompareConfig(
        cfg_for(tiny_llm, max_steps=2, lora_mix=True), methods=("wcos", "ls"), grid=2, budget_ratio=0.25
    )
    result = compare_llm(tiny_pairs, tmp_path / "c", cfg, log=quiet)
    # the paper's rule on request: the baselines first, then a quarter of DPO-LS's 2 x 2 steps
    assert list(result["methods"]) == ["wcos", "ls"] and "0.25 of the total optimizer steps" in result["budget_rule"]
    assert (result["methods"]["wcos"]["train_steps"], result["methods"]["ls"]["train_steps"]) == (1, 4)
    lora = {
        m: json.loads((tmp_path / "c" / "models" / d / "adapter_config.json").read_text())["r"]
        for m, d in (("wcos", "wcos"), ("ls", "ls-0"))
    }
    assert lora == {"wcos": 8, "ls": 4}
    hpt = {
        m: json.loads((tmp_path / "c" / "models" / d / "hpt_config.json").read_text())["lora_mix"]
        for m, d in (("wcos", "wcos"), ("ls", "ls-0"))
    }
    assert hpt == {"wcos": True, "ls": False}
    assert result["methods"]["ls"]["models_trained"] == 2


def test_modpo_terms_are_dpo_shifted_by_the_margin(tiny_llm, tiny_pairs):
    """(beta/w_1) (Delta log pi - Delta log pi_ref) - m / w_1, pair by pair; margin 0 and w_1 = 1 is DPO."""
    from cosdpo.training.preference_task import MODPOTask

    base, tok = load_base(str(tiny_llm))
    cfg = cfg_for(tiny_llm, method="modpo", fixed_weights=(0.4, 0.6))
    data, _, _ = load_split(tiny_pairs, tok, cfg, None, "train")
    data = data.subset(np.flatnonzero(data.objective == 0))
    policy = build_policy(base, cfg, 2)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    data.ref = sequence_scores(policy, data, reference=True)
    data.margin = np.random.default_rng(0).normal(size=len(data))
    records = list(range(0, len(data), 2))
    sums, counts = MODPOTask(cfg, data).terms(policy, data.batch(records), step=0)
    lp = sequence_scores(policy, data, torch.tensor([0.4, 0.6]))
    delta = (lp - data.ref)[data.chosen] - (lp - data.ref)[data.rejected]
    logit = (cfg.beta / 0.4) * delta[records] - data.margin[records] / 0.4
    expect = -torch.nn.functional.logsigmoid(torch.as_tensor(logit)).sum()
    assert counts.tolist() == [len(records), 0]
    assert float(sums[0].detach()) == pytest.approx(float(expect), rel=1e-4) and float(sums[1].detach()) == 0
    data.margin[:] = 0  # w_1 = 1, no margin: DPO-LS's terms
    one = cfg_for(tiny_llm, method="modpo", fixed_weights=(1.0, 0.0))
    ls = cfg_for(tiny_llm, fixed_weights=(1.0, 0.0))
    a, _ = MODPOTask(one, data).terms(policy, data.batch(records), step=0)
    b, _ = PreferenceTask(ls, data).terms(policy, data.batch(records), step=0)
    assert torch.allclose(a, b)


def test_modpo_with_one_objective_is_dpo(tiny_llm, tiny_pairs, tmp_path):
    """K = 1: no other objective, no margin, w_1 = 1: MO-DPO trains exactly the DPO-LS model."""
    one = dict(objectives=("short",), max_steps=2, fixed_weights=(1.0,))
    a, _ = finetune_llm(tiny_pairs, tmp_path / "m", cfg_for(tiny_llm, method="modpo", **one), log=quiet)
    b, _ = finetune_llm(tiny_pairs, tmp_path / "l", cfg_for(tiny_llm, **one), log=quiet)
    sa, sb = adapter_state(a), adapter_state(b)
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in sa.items())  # it trained


def test_compare_runs_every_baseline_and_shares_the_single_objective_policies(tiny_llm, tiny_pairs, tmp_path):
    from typer.testing import CliRunner

    from cosdpo.cli import app

    fast = "--batch-size 8 --held-out 0.25 --lora-rank 4 --prompt-tokens 2 --no-progress --lr 1e-2 --no-lora-mix"
    args = ["llm", "compare", "--model", str(tiny_llm), "--data", tiny_pairs, "--out", str(tmp_path / "c")]
    r = CliRunner().invoke(
        app, [*args, "--methods", "wcos,ls,soup,modpo", "--grid", "3", "--max-steps", "1", *fast.split()]
    )
    assert r.exit_code == 0, r.output
    methods = json.loads((tmp_path / "c" / "compare.json").read_text())["methods"]
    assert set(methods) == {"wcos", "ls", "soup", "modpo"}
    assert methods["modpo"]["models_trained"] == 3 + 1 and methods["soup"]["models_trained"] == 2
    models = sorted(p.name for p in (tmp_path / "c" / "models").iterdir())
    assert models == ["ls-0", "ls-1", "ls-2", "modpo-0", "modpo-1", "modpo-2", "single-0", "single-1", "wcos"]
    for m in methods.values():
        assert len(m["points"]) == 3 and 0 <= m["hypervolume"] <= 1
    assert [methods[m]["train_steps"] for m in ("wcos", "ls", "soup", "modpo")] == [1, 3, 2, 4]
