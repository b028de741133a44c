import json

import pytest

from cosdpo.data.preferences import hh_prompt_and_responses, load_preferences, parse_data_spec, split_dialogue

from .conftest import SHARED, requires_shared

PKU = SHARED / "pku-saferlhf" / "sample.jsonl"
HH = SHARED / "hh-rlhf"


@requires_shared(PKU)
def test_pku_rows_judge_both_objectives():
    pairs, report = load_preferences(PKU, "pku")
    rows = [json.loads(line) for line in open(PKU)]
    assert report.kept == {"helpful": 5, "harmless": 5} and not report.skipped
    for p in pairs:
        row = rows[int(p.source.rsplit(":", 1)[1]) - 1]
        key = "better_response_id" if p.objective == "helpful" else "safer_response_id"
        assert p.chosen == row[f"response_{row[key]}"] and p.rejected == row[f"response_{1 - row[key]}"]
        assert p.prompt == ({"role": "user", "content": row["prompt"].strip()},)


@requires_shared(PKU)
def test_pku_safety_contrast_keeps_harmless_pairs_of_one_safe_and_one_unsafe_answer(tmp_path):
    rows = [json.loads(line) for line in open(PKU)]
    # the shared rows, then the same rows with one answer flagged unsafe, then one without flags
    flipped = [r | {"is_response_0_safe": True, "is_response_1_safe": False} for r in rows]
    bare = {k: v for k, v in rows[0].items() if not k.startswith("is_response")}
    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *flipped, bare]))
    contrast = [i + 1 for i, r in enumerate(rows) if r["is_response_0_safe"] != r["is_response_1_safe"]]
    pairs, report = load_preferences(path, "pku", pku_filter="safety-contrast")
    harmless = sorted(int(p.source.rsplit(":", 1)[1]) for p in pairs if p.objective == "harmless")
    assert harmless == contrast + list(range(len(rows) + 1, 2 * len(rows) + 1))
    assert report.kept["helpful"] == 2 * len(rows) + 1  # helpful pairs never filtered
    assert report.skipped["harmless pair left out: both answers equally safe (safety-contrast)"] == len(rows) - len(
        contrast
    )
    assert report.skipped["harmless pair without is_response_0_safe / is_response_1_safe flags"] == 1
    assert load_preferences(path, "pku")[1].kept["harmless"] == 2 * len(rows) + 1  # none: every row's pair


@requires_shared(HH / "helpful.jsonl.gz")
def test_hh_prompt_is_the_shared_prefix():
    pairs, report = load_preferences(HH / "helpful.jsonl.gz", "hh", "helpful")
    assert report.kept["helpful"] + sum(report.skipped.values()) == 1854
    assert report.kept["helpful"] > 1800
    first = pairs[0]
    assert first.prompt == (
        {"role": "user", "content": "Do you know why turkeys became the official food of thanksgiving?"},
    )
    assert first.chosen.startswith("To be honest, I don’t know anything about that.")
    assert first.rejected.startswith("I know that the American Indians")
    for p in pairs[:200]:  # multi-turn prompts alternate and end with the user's turn
        roles = [m["role"] for m in p.prompt]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert p.chosen != p.rejected


def test_hh_split_details():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: well, fine"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"
    prompt, c, r = hh_prompt_and_responses(chosen, rejected)
    assert prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
    ]
    assert (c, r) == ("well, fine", "go away")
    assert split_dialogue("\n\nHuman: a b\n\nAssistant: c") == [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "c"},
    ]
    assert hh_prompt_and_responses("\n\nHuman: x", "\n\nHuman: y") is None


def test_bad_rows_are_counted_with_their_place(tmp_path):
    f = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "q2", "chosen": "same", "rejected": "same"},
        {"prompt": "  ", "chosen": "a", "rejected": "b"},
        {"prompt": "q4", "rejected": "b"},
        "not an object",
        {"prompt": [{"role": "user", "content": "q6"}], "chosen": "x", "rejected": "y"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    pairs, report = load_preferences(f, "jsonl", "brevity")
    assert [p.source for p in pairs] == [f"{f}:1", f"{f}:6"]
    assert report.skipped == {
        "identical responses": 1,
        "empty prompt": 1,
        "missing field 'chosen'": 1,
        "missing field 'prompt'": 1,
        "not JSON (Expecting property name enclosed in double quotes)": 1,
    }
    assert report.examples["identical responses"] == [f"{f}:2"]
    assert "skipped 1 row: identical responses" in report.summary()


def test_loader_arguments():
    with pytest.raises(ValueError, match="one objective"):
        load_preferences("x.jsonl", "hh")
    with pytest.raises(ValueError, match="format"):
        load_preferences("x.jsonl", "csv", "a")
    with pytest.raises(FileNotFoundError):
        load_preferences("/nonexistent.jsonl", "jsonl", "a")
    assert parse_data_spec("helpful=a.jsonl, harmless=b.jsonl") == [("helpful", "a.jsonl"), ("harmless", "b.jsonl")]
    assert parse_data_spec("pku.jsonl") == [(None, "pku.jsonl")]
