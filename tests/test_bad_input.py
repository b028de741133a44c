"""The bad-input corpus: every way a careless or hostile user can feed cosdpo a wrong option, file, row or
folder, each with the exit code (or exception) and the message fragment it must give, before any work.

Cases are rows of small tables built from files the tests write; a new option joins a table.
"""

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from cosdpo.atomic import atomic_dir, clean_partial_writes, write_json
from cosdpo.cli import app

from .conftest import TINY

runner = CliRunner()
SMALL = ["--d-model", "16", "--heads", "2", "--layers", "1", "--no-progress", "--min-steps", "0"]
ROW = " ".join(f"{j}:{(j % 7) / 3:.2f}" for j in range(1, 137))


def letor(lines: int = 40, labels=None, extra: str = "", end: str = "\n") -> str:
    """MSLR-shaped text: 4 documents per query, every line with all 136 features."""
    labels = labels if labels is not None else [i % 3 for i in range(lines)]
    text = "".join(f"{labels[i]} qid:{i // 4} {ROW}\n" for i in range(lines)) + extra
    return text[:-1] + end if end != "\n" else text


def finetune(data, base):
    return ["ltr", "finetune", "--data", data, "--base", base, "--objectives", "quality1,quality2", "--out"]


def cli(args, code=2):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_fold, tiny_base):
    """A trained conditioned ranker and a few broken data files."""
    from cosdpo.training.ltr import FinetuneConfig, finetune  # here: this file's finetune() builds CLI args

    root = tmp_path_factory.mktemp("bad")
    finetune(
        tiny_fold,
        tiny_base,
        root / "wcos",
        FinetuneConfig(objectives=("quality1", "quality2"), epochs=1, **TINY),
    )
    files = {
        "wide.txt": letor(extra=f"1 qid:99 {ROW} 137:1\n"),
        "zero.txt": letor(extra="1 qid:99 0:1 2:1\n"),
        "cut.txt": letor(end=""),
        "cut_number.txt": letor()[:-30],
        "flat.txt": letor(labels=[0] * 40),
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


TRAIN_OPTIONS = [
    (["--alpha", "inf"], "alpha must be finite"),
    (["--beta", "inf"], "beta must be finite"),
    (["--penalty", "nan"], "penalty must be finite"),
    (["--lr", "inf"], "lr must be finite"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--method", "tcos", "--beta-range", "0.1,inf"], "beta_range must be finite"),
    (["--method", "modpo"], "method must be one of wcos, tcos, ls"),
    (["--weights", "0.5,0.6"], "not on the simplex"),
    (["--objectives", "quality1,quality1"], "an objective is named twice"),
    (["--epochs", "0"], "epochs must be >= 1"),
]


@pytest.mark.parametrize("extra, message", TRAIN_OPTIONS)
def test_ltr_finetune_options(folders, tiny_fold, tiny_base, extra, message):
    out = cli(
        [
            *finetune(tiny_fold, tiny_base),
            folders / "never",
            *extra,
            *SMALL,
        ]
    )
    assert message in out and not (folders / "never").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("wide.txt", "wide.txt:41: feature index 137 is beyond the 136 features"),
        ("zero.txt", "zero.txt:41: malformed line: feature index in '0:1' is not a positive integer"),
        ("cut.txt", "cut.txt:40: the last line has no line end: the file looks cut short"),
        ("cut_number.txt", "the file looks cut short"),
        ("flat.txt", "no training query has two different values of its relevance label"),
    ],
)
def test_letor_files(folders, name, message):
    out = cli(["ltr", "train-base", "--data", folders / name, "--out", folders / f"b-{name}", *SMALL])
    assert message in out and not (folders / f"b-{name}" / "config.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reference", "nan,nan"], "the reference point must be finite numbers"),
        (["--grid-kind", "bogus"], "unknown grid kind 'bogus'"),
        (["--beta-prime", "0"], "temperatures must be finite and > 0"),
        (["--beta-prime", "inf"], "temperatures must be finite and > 0"),
    ],
)
def test_ltr_front_options(folders, tiny_fold, extra, message):
    out = cli(["ltr", "front", "--model", folders / "wcos", "--data", tiny_fold, "--out", folders / "f", *extra])
    assert message in out and not (folders / "f" / "front.json").exists()


def test_broken_ranker_folders(folders, tmp_path, tiny_fold):
    import shutil

    def broken(name, edit):
        d = tmp_path / name
        shutil.copytree(folders / "wcos", d)
        edit(d)
        return cli(["ltr", "front", "--model", d, "--data", tiny_fold, "--out", tmp_path / "f"])

    def drop_kind(d):
        cfg = json.loads((d / "config.json").read_text())
        del cfg["kind"]
        (d / "config.json").write_text(json.dumps(cfg))

    def truncate(d):
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])

    def widen(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg["scorer"]["d_model"] = 32
        (d / "config.json").write_text(json.dumps(cfg))

    assert "incomplete or inconsistent ranker config (KeyError: 'kind')" in broken("kind", drop_kind)
    assert "not a readable safetensors file" in broken("cut", truncate)
    assert "does not match config.json" in broken("wide", widen)


def test_a_diverging_run_stops_and_saves_nothing(tiny_fold, tiny_base, tmp_path):
    """A finite but absurd learning rate: the loss turns non-finite, training stops at that step with one
    line, and no model (nor any JSON holding NaN) is written."""
    out = cli(
        [
            *finetune(tiny_fold, tiny_base),
            tmp_path / "m",
            "--lr",
            "1e30",
            "--epochs",
            "3",
            "--grad-clip",
            "0",
            *SMALL,
        ]
    )
    assert "training stopped at step" in out and "is not finite" in out
    assert not (tmp_path / "m" / "config.json").exists() and not (tmp_path / "m" / "metrics.json").exists()


def test_json_is_always_valid(tmp_path):
    write_json(tmp_path / "x.json", {"hypervolume": float("nan"), "points": [[0.5, float("inf")]]})
    text = (tmp_path / "x.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert saved["hypervolume"] is None and saved["points"] == [[0.5, None]]
    assert saved["null_values"]["where"] == ["hypervolume", "points[0][1]"]


def test_leftovers_of_an_interrupted_write_are_cleaned_on_the_next_run(tiny_fold, tiny_base, tmp_path):
    out = tmp_path / "m"
    (out / ".checkpoint.tmp-abc").mkdir(parents=True)
    (out / ".model.safetensors.123.tmp").write_bytes(b"half")
    cli(["ltr", "train-base", "--data", tiny_fold, "--out", out, "--epochs", "1", *SMALL], code=0)
    names = {p.name for p in out.iterdir()}
    assert ".checkpoint.tmp-abc" not in names and ".model.safetensors.123.tmp" not in names
    assert {"config.json", "model.safetensors", "checkpoint"} <= names
    (tmp_path / "x" / ".checkpoint.old").mkdir(parents=True)  # a crash mid-swap: recover_dir still needs it
    (tmp_path / "x" / ".a.tmp").write_text("")
    assert clean_partial_writes(tmp_path / "x") == [".a.tmp"] and (tmp_path / "x" / ".checkpoint.old").is_dir()


def test_serving_refuses_non_finite_features(folders):
    from cosdpo import load_ranker, rank_items, score_items

    model = load_ranker(folders / "wcos")
    docs = np.ones((5, 136), dtype=np.float32)
    assert np.isfinite(score_items(model, docs, [0.5, 0.5])).all()
    docs[3, 7] = np.nan
    for fn in (score_items, rank_items):
        with pytest.raises(ValueError, match="item 3 has a NaN or infinite feature"):
            fn(model, docs, [0.5, 0.5])
    with pytest.raises(ValueError, match="items is empty"):
        score_items(model, np.zeros((0, 136)), [0.5, 0.5])


# LLM: options, rows and folders


def _jsonl(path, rows, raw: bytes = b""):
    path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode() + raw)
    return path


GOOD = {"prompt": "hello world", "chosen": "the cat", "rejected": "a dog ran"}


def llm_finetune(model, data, out, *extra):
    return ["llm", "finetune", "--model", model, "--data", data, "--out", out, "--no-progress", *extra]


@pytest.mark.parametrize(
    "rows, fmt, message",
    [
        ([GOOD | {"prompt": ["hello", "world"]}] * 3, None, "prompt is neither text nor chat messages"),
        ([GOOD | {"prompt": {"text": "hello"}}] * 3, None, "prompt is neither text nor chat messages"),
        ([GOOD | {"prompt": 7}] * 3, None, "prompt is neither text nor chat messages"),
        ([GOOD | {"prompt": [{"content": "hello"}]}] * 3, None, "prompt is neither text nor chat messages"),
        ([GOOD | {"chosen": 3}] * 3, None, "a response is neither text nor messages"),
        ([{"chosen": ["x"], "rejected": 5}] * 3, "hh", "not two dialogues differing in the last answer"),
        ([GOOD] * 3, "hh", "no usable preference pairs"),
        ([GOOD] * 3, "pku", "no usable preference pairs (3 rows: missing field 'response_0')"),
    ],
)
def test_preference_rows(tiny_llm, tmp_path, rows, fmt, message):
    data = _jsonl(tmp_path / "d.jsonl", rows)
    out = cli(llm_finetune(tiny_llm, f"a={data}", tmp_path / "p", *(["--format", fmt] if fmt else [])))
    assert message in out and "is --format right?" in out and not (tmp_path / "p").exists()


def test_binary_bytes_and_a_duplicated_objective(tiny_llm, tmp_path):
    rows = [GOOD | {"prompt": f"hello world {i}"} for i in range(4)]
    data = _jsonl(tmp_path / "d.jsonl", rows, raw=b"\xff\xfe\x00garbage\n")
    out = cli(
        llm_finetune(
            tiny_llm, f"a={data}", tmp_path / "p", "--max-steps", "1", "--batch-size", "2", "--held-out", "0.5"
        ),
        code=0,
    )
    assert "not UTF-8 text" in out and "d.jsonl:5" in out
    out = cli(["llm", "finetune", "--model", tiny_llm, "--data", f"a={data},a={data}", "--out", tmp_path / "q"])
    assert "names objective 'a' twice" in out


def test_trl_conversational_rows_read_the_assistants_text(tmp_path):
    from cosdpo.data.preferences import load_preferences

    user = [{"role": "user", "content": "hi there"}]
    explicit = {
        "prompt": user,
        "chosen": [{"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    }
    implicit = {
        "chosen": user + [{"role": "assistant", "content": "hello!"}],
        "rejected": user + [{"role": "assistant", "content": "go away"}],
    }
    for row in (explicit, implicit):
        pairs, _ = load_preferences(_jsonl(tmp_path / "t.jsonl", [row]), None, "a")
        assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == (tuple(user), "hello!", "go away")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sample", "--temperature", "-1"], "the sampling temperature must be a finite number > 0"),
        (["--sample", "--temperature", "0"], "the sampling temperature must be a finite number > 0"),
        (["--sample", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
        (["--max-new-tokens", "-1"], "max_new_tokens must be an integer >= 1"),
        (["--beta-prime", "nan"], "must be a finite number > 0"),
    ],
)
def test_generate_options(tmp_path, extra, message):
    assert message in cli(["llm", "generate", "--model", tmp_path, "--weights", "1", *extra, "hi"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "inf"], "lr must be finite"),
        (["--penalty", "nan", "--weight-sampling", "step"], "penalty must be finite"),
        (["--held-out", "1.5"], "held_out must be in (0, 1)"),
        (["--prompt-template", "alpaca"], "prompt_template must be one of chat, pku, plain"),
    ],
)
def test_llm_finetune_options(tiny_llm, tiny_pairs, tmp_path, extra, message):
    out = cli(["llm", "finetune", "--model", tiny_llm, "--data", tiny_pairs, "--out", tmp_path / "p", *extra])
    assert message in out and not (tmp_path / "p").exists()


def test_models_that_cannot_load_fail_fast(tiny_llm, tiny_pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    out = cli(["llm", "finetune", "--model", "nope", "--data", tiny_pairs, "--out", tmp_path / "p"])
    assert "--model nope: not a local folder, not in the Hugging Face cache" in out
    assert time.perf_counter() - t0 < 20
    # pickled weights are refused: a .bin checkpoint can run code when loaded
    import transformers

    pickled = tmp_path / "pickled"
    import torch

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llm))
    model.config.save_pretrained(str(pickled))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    transformers.AutoTokenizer.from_pretrained(str(tiny_llm)).save_pretrained(str(pickled))
    assert not list(pickled.glob("*.safetensors"))
    out = cli(["llm", "finetune", "--model", pickled, "--data", tiny_pairs, "--out", tmp_path / "q"])
    assert "cannot load it as a causal LM with safetensors weights" in out


def test_hf_dataset_folders_that_cannot_load(tiny_llm, tmp_path):
    folder = tmp_path / "scripted"
    folder.mkdir()
    (folder / "scripted.py").write_text("raise SystemExit('a loading script must never run')\n")
    out = cli(["llm", "finetune", "--model", tiny_llm, "--data", f"a=hf:{folder}", "--out", tmp_path / "p"])
    assert f"hf:{folder}: cannot load this dataset" in out


def test_hf_data_detect_their_format_as_files_do(tmp_path):
    """A local dataset folder (here HH-shaped rows) is read by its first row's fields, not as generic jsonl."""
    from cosdpo.data.preferences import load_preferences

    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello!", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}]
    (tmp_path / "hh").mkdir()
    _jsonl(tmp_path / "hh" / "train.jsonl", rows)
    pairs, _ = load_preferences(f"hf:{tmp_path / 'hh'}", None, "a")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        (({"role": "user", "content": "hi"},), "hello!", "go away")
    ]


def test_atomic_writes_get_the_permissions_a_plain_write_gets(tmp_path):
    """tempfile's private 0600 / 0700 must not leak into finished model and result folders."""
    (tmp_path / "plain.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    write_json(tmp_path / "result.json", {})
    with atomic_dir(tmp_path / "model") as d:
        (d / "weights").write_text("x")
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777  # noqa: E731
    assert mode("result.json") == mode("plain.json") and mode("model") == mode("plain")


def test_a_warning_is_one_line_said_once(tiny_fold, tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("COSDPO_CACHE", str(tmp_path / "not-a-folder"))  # the parse cache cannot be written
    out = cli(["ltr", "train-base", "--data", tiny_fold, "--out", tmp_path / "b", "--epochs", "1", *SMALL], code=0)
    said = [line for line in out.splitlines() if "could not cache" in line]
    # train.txt is read twice (its width, then its rows): still one line
    assert len(said) == 2 and all(line.startswith("warning: ") for line in said), out
    assert "UserWarning" not in out and (tmp_path / "b" / "config.json").is_file()
