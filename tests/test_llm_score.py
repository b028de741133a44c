"""``cosdpo llm score``: answers at each w scored by reward models and functions, checked against direct calls."""

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("peft")

from cosdpo.cli import app  # noqa: E402
from tests.tiny_llm import save_tiny_reward_model  # noqa: E402

runner = CliRunner()


def cat_words(prompt: str, response: str) -> float:
    """A programmatic objective: how often the answer says cat."""
    return float(response.split().count("cat"))


@pytest.fixture(scope="module")
def scored(tiny_llm, tiny_pairs, tmp_path_factory):
    import torch

    from cosdpo.models.llm import load_policy, save_policy
    from cosdpo.training.llm import LLMConfig, finetune_llm

    root = tmp_path_factory.mktemp("score")
    cfg = LLMConfig(model=str(tiny_llm), max_steps=1, batch_size=8, held_out=0.25, prompt_tokens=2, progress=False)
    finetune_llm(tiny_pairs, root / "p", cfg, log=lambda *_: None)
    policy, tokenizer, info = load_policy(root / "p")
    g = torch.Generator().manual_seed(0)
    for name, p in policy.named_parameters():  # make w change the answers
        if "lora_B" in name or "mlp_a.2" in name or "mlp_b.2" in name:
            torch.nn.init.normal_(p, std=0.6, generator=g)
    save_policy(policy, tokenizer, root / "p", info)
    rm = save_tiny_reward_model(root / "rm", seed=1)
    args = ["llm", "score", "--model", str(root / "p"), "--grid", "3", "--max-prompts", "4", "--max-new-tokens", "6"]
    reward = f"short={rm},cat=tests.test_llm_score:cat_words"
    r = runner.invoke(app, [*args, "--reward", reward, "--out", str(root / "out"), "--no-progress"])
    assert r.exit_code == 0, r.output
    return root, args, r.output


def test_scores_are_the_scorers_on_the_generated_answers(scored):
    import torch

    from cosdpo import generate, load_policy
    from cosdpo.evaluation.rewards import RewardModel

    root, _, output = scored
    front = json.loads((root / "out" / "front.json").read_text())
    rows = [json.loads(line) for line in (root / "out" / "generations.jsonl").read_text().splitlines()]
    assert front["objectives"] == ["short", "cat"] and len(front["weights"]) == 3 and front["prompts"] == 4
    assert len(rows) == 4 * 4 and (root / "out" / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert "hypervolume" in output
    policy, tokenizer, info = load_policy(root / "p")
    rm = RewardModel(root / "rm")
    for i, w in enumerate([*front["weights"], None]):
        at = [r for r in rows if r["weights"] == w]
        prompts, answers = [r["prompt"] for r in at], [r["response"] for r in at]
        want = generate(
            policy, tokenizer, prompts, w or [0.5, 0.5], beta=info["beta"], max_new_tokens=6, reference=w is None
        )
        assert answers == want
        direct = rm.score(prompts, answers)
        np.testing.assert_allclose([r["scores"]["short"] for r in at], direct, rtol=1e-5)
        assert [r["scores"]["cat"] for r in at] == [cat_words("", a) for a in answers]
        point = front["points"][i] if w is not None else front["base_point"]
        np.testing.assert_allclose(point, [np.mean(direct), np.mean([cat_words("", a) for a in answers])], rtol=1e-5)
    # the reward model reads the whole exchange: another answer, another score
    assert rm.score([prompts[0]], ["the cat"])[0] != pytest.approx(rm.score([prompts[0]], ["hello world"])[0])
    assert torch.is_grad_enabled()


def test_bad_scorers_fail_in_one_line(scored, tmp_path):
    root, args, _ = scored
    for reward, words in (
        ("short=tests.test_llm_score:cat_words", "each of the policy's objectives"),
        ("short=x:y,cat=tests.test_llm_score:cat_words", "cannot import"),
        (f"short={tmp_path},cat=tests.test_llm_score:cat_words", "no reward model folder"),
        ("short,cat=x", "OBJECTIVE=DIR"),
    ):
        r = runner.invoke(app, [*args, "--reward", reward, "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output, (reward, r.output)


def test_prompts_from_a_file(scored, tmp_path):
    root, args, _ = scored
    (tmp_path / "prompts.txt").write_text("why is the sky blue\n\nhello there\n")
    reward = "short=tests.test_llm_score:cat_words,cat=tests.test_llm_score:cat_words"
    r = runner.invoke(
        app, [*args, "--reward", reward, "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "o" / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows[:2]] == ["why is the sky blue", "hello there"] and len(rows) == 2 * 4


def test_export_at_a_fixed_w_is_a_plain_peft_lora_with_the_same_logits(scored, tmp_path):
    """PEFT alone loads the export; with the saved prefix before the prompt, its logits are the policy's at w."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from cosdpo import load_policy
    from cosdpo.data.tokenize import prompt_ids

    root, _, _ = scored
    r = runner.invoke(
        app, ["llm", "export", "--model", str(root / "p"), "--weights", "0.3,0.7", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 0, r.output
    policy, tokenizer, info = load_policy(root / "p")
    assert policy.cfg.lora_mix  # the default: the export folds w into the LoRA
    ids = torch.tensor([prompt_ids(tokenizer, "the cat sat")])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = policy(ids, mask, torch.tensor([0.3, 0.7]))
        with warnings.catch_warnings():  # PEFT's own deprecation warning about transformers, not ours
            warnings.simplefilter("ignore", FutureWarning)
            plain = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(info["base_model"]), str(tmp_path / "x")
            )
        prefix = load_file(str(tmp_path / "x" / "prefix.safetensors"))["prefix"]
        embeds = torch.cat([prefix[None], plain.get_input_embeddings()(ids)], dim=1)
        theirs = plain(inputs_embeds=embeds).logits[:, prefix.shape[0] :]
        other = policy(ids, mask, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (other - ours).abs().max() > 1e-3  # w matters: the test can fail
    card = (tmp_path / "x" / "README.md").read_text()
    assert "library_name: peft" in card and "0.3,0.7" in card
    card = (root / "p" / "README.md").read_text()
    assert "cosdpo llm generate" in card and f"base_model: {info['base_model']}" in card
    assert "Training recipe: 1 steps" in card and "lora_mix True" in card
