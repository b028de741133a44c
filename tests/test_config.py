"""Configs as data: recipes, config files, run.yaml, and the rules that keep the code base in one direction."""

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from cosdpo.cli import app
from cosdpo.config import from_dict, read_config, recipes, to_dict
from cosdpo.training.compare import CompareConfig
from cosdpo.training.llm import LLMConfig
from cosdpo.training.ltr import BaseConfig, FinetuneConfig

from .conftest import SHARED, requires_shared

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = ["--d-model", "16", "--heads", "2", "--layers", "1", "--no-progress", "--min-steps", "0"]
CONFIGS = {"ltr finetune": FinetuneConfig, "ltr train-base": BaseConfig, "llm finetune": LLMConfig}
INPUTS = {"data", "base", "format"}


def ok(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def fail(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    return res.output


def test_recipes_are_listed_and_each_builds_its_config():
    out = ok(["recipes"])
    found = recipes()
    assert {"hh-rlhf-cpu", "hh-rlhf-paper", "mslr-k2", "mslr-k5", "mslr-paper", "ranking-demo"} <= set(found)
    for name, values in found.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"cosdpo {values['command']}" in line and values["description"][:30] in line
        cfg = from_dict(
            CONFIGS[values["command"]],
            {k: v for k, v in values.items() if k not in INPUTS | {"command", "description"}},
        )
        for key, value in values.items():  # every value of the file reached the config
            if hasattr(cfg, key):
                assert to_dict(cfg)[key] == value, (name, key)
    assert "lora_mix: true" in ok(["recipes", "hh-rlhf-cpu"])
    assert "unknown recipe 'nope'" in fail(["recipes", "nope"])


def test_every_option_has_one_line_of_help():
    for cls in (BaseConfig, FinetuneConfig, LLMConfig, CompareConfig):
        for f in dataclasses.fields(cls):
            if f.name in ("train", "overwrite", "extra"):
                continue
            text = f.metadata.get("help", "")
            assert text and "\n" not in text and not re.search(r"issue|METHOD|our measurements", text), f.name


def test_a_run_repeated_from_its_run_yaml_is_the_same_run(tiny_fold, tiny_base, tmp_path):
    first = tmp_path / "first"
    ok(
        [
            "ltr",
            "finetune",
            "--data",
            tiny_fold,
            "--base",
            tiny_base,
            "--objectives",
            "quality1,url_clicks",
            "--out",
            first,
            "--epochs",
            "2",
            "--alpha",
            "0.5",
            "--grades",
            "url_clicks=log2",
            *SMALL,
        ]
    )
    written = read_config(first / "run.yaml")
    assert written["command"] == "ltr finetune" and written["alpha"] == 0.5 and written["epochs"] == 2
    assert written["objectives"] == ["quality1", "url_clicks"] and written["grades"] == {"url_clicks": "log2"}
    again = tmp_path / "again"
    ok(["ltr", "finetune", "--config", first / "run.yaml", "--out", again])
    assert (again / "run.yaml").read_text() == (first / "run.yaml").read_text()
    a, b = (load_file(str(d / "model.safetensors")) for d in (first, again))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # the command line overrides the file, and only what is typed does
    ok(["ltr", "finetune", "--config", first / "run.yaml", "--out", tmp_path / "lr", "--lr", "0.01"])
    changed = read_config(tmp_path / "lr" / "run.yaml")
    assert changed["lr"] == 0.01 and changed["alpha"] == 0.5 and changed["epochs"] == 2


def test_recipe_then_file_then_command_line(tiny_fold, tiny_base, tmp_path):
    (tmp_path / "c.toml").write_text('epochs = 1\nalpha = 0.2\nobjectives = ["quality1", "quality2"]\n')
    ok(
        [
            "ltr",
            "finetune",
            "--recipe",
            "mslr-k2",
            "--config",
            tmp_path / "c.toml",
            "--data",
            tiny_fold,
            "--base",
            tiny_base,
            "--out",
            tmp_path / "m",
            "--alpha",
            "0.1",
            *SMALL,
        ]
    )
    got = read_config(tmp_path / "m" / "run.yaml")
    assert got["patience"] == 0  # the recipe's
    assert got["epochs"] == 1  # the file's over the recipe's 45
    assert got["alpha"] == 0.1  # the command line's over both
    assert got["data"] == str(tiny_fold)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: 2\nalpah: 0.1\n", "unknown option(s) ['alpah']"),
        ("command: llm finetune\n", "is for `cosdpo llm finetune`, not `cosdpo ltr finetune`"),
        ("epochs: [1\n", "not a valid YAML file"),
        ("- 1\n- 2\n", "a config file holds option: value lines"),
        ("objectives: [quality1]\nalpha: .nan\n", "alpha must be finite"),
        ("objectives: [quality1]\nmethod: modpo\nfixed_weights: [1.0]\n", "method must be one of wcos, tcos, ls"),
    ],
)
def test_bad_config_files_are_one_line(tiny_fold, tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    out = fail(
        [
            "ltr",
            "finetune",
            "--config",
            tmp_path / "c.yaml",
            "--data",
            tiny_fold,
            "--base",
            tmp_path,
            "--out",
            tmp_path / "o",
        ]
    )
    assert message in out and "Traceback" not in out and not (tmp_path / "o").exists()


def test_compare_takes_no_method_and_finetune_no_modpo(tiny_fold, tmp_path):
    assert "No such option" in runner.invoke(app, ["ltr", "compare", "--method", "tcos"]).output
    out = fail(
        [
            "ltr",
            "finetune",
            "--data",
            tiny_fold,
            "--base",
            tmp_path,
            "--objectives",
            "quality1",
            "--out",
            tmp_path / "o",
            "--method",
            "modpo",
        ]
    )
    assert "method must be one of wcos, tcos, ls" in out


def test_llm_run_repeated_from_its_run_yaml(tiny_llm, tiny_pairs, tmp_path):
    args = [
        "--model",
        tiny_llm,
        "--data",
        tiny_pairs,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--lora-rank",
        "2",
        "--prompt-tokens",
        "2",
        "--held-out",
        "0.25",
        "--no-progress",
    ]
    ok(["llm", "finetune", "--out", tmp_path / "a", *args])
    ok(["llm", "finetune", "--config", tmp_path / "a" / "run.yaml", "--out", tmp_path / "b"])
    assert (tmp_path / "a" / "run.yaml").read_text() == (tmp_path / "b" / "run.yaml").read_text()
    for name in ("adapter_model.safetensors", "hpt.safetensors"):
        a, b = (load_file(str(tmp_path / d / name)) for d in ("a", "b"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    info = json.loads((tmp_path / "a" / "policy.json").read_text())
    assert info["config"]["lora_mix"] and info["config"]["weight_sampling"] == "pair"  # the defaults


@pytest.mark.slow
@requires_shared(SHARED / "hh-rlhf" / "helpful.jsonl.gz")
def test_hh_recipe_needs_no_other_flag(tiny_llm, tmp_path):
    """The recipe alone sets the setting whose front follows w (the model is swapped for a tiny one, and the
    run cut to two steps, only to keep the test short)."""
    hh = SHARED / "hh-rlhf"
    ok(
        [
            "llm",
            "finetune",
            "--recipe",
            "hh-rlhf-cpu",
            "--data",
            f"helpful={hh / 'helpful.jsonl.gz'},harmless={hh / 'harmless.jsonl.gz'}",
            "--out",
            tmp_path / "hh",
            "--model",
            tiny_llm,
            "--max-steps",
            "2",
            "--max-pairs",
            "8",
            "--no-progress",
        ]
    )
    got = yaml.safe_load((tmp_path / "hh" / "run.yaml").read_text())
    assert got["format"] == "hh" and got["lora_mix"] and got["weight_sampling"] == "pair"
    assert got["prompt_mask"] == "tanh" and got["precision"] == "auto" and got["max_length"] == 160


def test_cli_modules_import_alone_in_a_fresh_interpreter():
    for module in ("cosdpo.cli.llm", "cosdpo.cli.ltr", "cosdpo.cli"):
        res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    """The cosdpo modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(".".join(p for p in (base, node.module or "") if p))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("cosdpo")}


def test_layers_import_one_way():
    for layer, forbidden in (
        ("data", ("models", "losses", "training", "evaluation", "cli")),
        ("models", ("training", "evaluation", "cli")),
        ("evaluation", ("training", "cli")),
        ("training", ("cli",)),
    ):
        for path in (ROOT / "cosdpo" / layer).glob("*.py"):
            bad = [m for m in _imports(path) if m.split(".")[1:2] and m.split(".")[1] in forbidden]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    for leaf in ("simplex.py", "config.py"):
        bad = [m for m in _imports(ROOT / "cosdpo" / leaf) if m != "cosdpo.atomic"]
        assert not bad, f"{leaf} should import nothing of the package, imports {bad}"


def test_importing_cosdpo_leaves_matplotlibs_backend_alone():
    code = "import matplotlib; b = matplotlib.get_backend(); import cosdpo; assert matplotlib.get_backend() == b"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"MPLBACKEND": "svg", "PATH": ""}
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_no_file_cites_an_issue_or_a_file_outside_the_repository():
    """Code and docs cite docs/method.md and files of the repository; tests alone may read the shared data."""
    cites = re.compile(r"(?i:issue #?\d+)|METHOD\.md")
    outside = re.compile(r"\.\./shared")
    shipped = [
        *ROOT.glob("cosdpo/**/*.py"),
        *ROOT.glob("cosdpo/**/*.yaml"),
        *ROOT.glob("docs/**/*.md"),
        ROOT / "README.md",
        *ROOT.glob("benchmarks/*.py"),
    ]
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in [*shipped, *ROOT.glob("tests/*.py")]
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if cites.search(line) or (p in shipped and outside.search(line))
    ]
    assert not hits, hits


def test_configuration_reference_is_current():
    from cosdpo.cli.reference import markdown

    assert (ROOT / "docs" / "configuration.md").read_text() == markdown(), (
        "docs/configuration.md is stale: python -m cosdpo.cli.reference > docs/configuration.md"
    )


def _anchors(md: Path) -> set:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.M | re.S)  # a "# comment" in a code block is no heading
    headings = re.findall(r"^#+ (.+)$", prose, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_in_the_docs_resolves():
    broken = []
    for md in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")]:
        for link, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", md.read_text()):
            if link.startswith("http"):
                continue
            target = md.parent / link if link else md
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
                broken.append(f"{md.relative_to(ROOT)} -> {link}#{anchor}")
    assert not broken, broken


@requires_shared(SHARED / "pku-saferlhf" / "sample.jsonl")
def test_pku_gpt2_recipe_on_a_tiny_gpt2(tmp_path):
    """The paper's setting runs as shipped, on a tiny GPT-2 (no chat template: the recipe's PKU template)
    and the PKU-SafeRLHF sample; the template travels with the policy to front and generate."""
    from tests.tiny_llm import save_tiny_gpt2

    gpt2 = save_tiny_gpt2(tmp_path / "gpt2")
    data = SHARED / "pku-saferlhf" / "sample.jsonl"
    out = fail(["llm", "finetune", "--data", data, "--model", gpt2, "--out", tmp_path / "x", "--no-progress"])
    assert "has no chat template; pass --prompt-template pku or plain" in out
    ok(
        [
            "llm",
            "finetune",
            "--recipe",
            "pku-gpt2-paper",
            "--data",
            data,
            "--model",
            gpt2,
            "--out",
            tmp_path / "p",
            "--precision",
            "fp32",
            "--max-length",
            "4096",
            "--batch-size",
            "2",
            "--held-out",
            "0.4",
            "--max-steps",
            "2",
            "--no-progress",
        ]
    )
    info = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert info["config"]["prompt_template"] == "pku" and info["config"]["lora_targets"] == []
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    ok(["llm", "front", "--model", tmp_path / "p", "--out", tmp_path / "f", "--grid", "2", "--no-progress"])
    assert json.loads((tmp_path / "f" / "front.json").read_text())["objectives"] == ["helpful", "harmless"]
    ok(
        [
            "llm",
            "generate",
            "--model",
            tmp_path / "p",
            "--weights",
            "0.5,0.5",
            "--beta-prime",
            "0.05",
            "--max-new-tokens",
            "3",
            "hello",
        ]
    )
    from cosdpo.generation import generate
    from cosdpo.models.llm import load_policy

    policy, tokenizer, info = load_policy(tmp_path / "p")
    # beta' -> infinity is the base model: the reloaded GPT-2 policy answers as its base does
    far, base = (
        generate(policy, tokenizer, ["hello"], [0.5, 0.5], beta=info["beta"], max_new_tokens=4, **kw)
        for kw in ({"beta_prime": 1e12}, {"reference": True})
    )
    assert far == base
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "BEGINNING OF CONVERSATION: USER: hi ASSISTANT:"
