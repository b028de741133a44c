"""The demo's preference builder: only clear preferences become pairs, in the right direction."""

import json

import pytest

pytest.importorskip("transformers")

from cosdpo.llm_demo import make_pairs  # noqa: E402


def test_make_pairs_keeps_clear_preferences_only(tmp_path):
    short, near = "Water is wet.", "Water is very wet."  # 3 and 4 words: a near tie on both objectives
    long = " ".join(f"word{i}" for i in range(40))  # 40 distinct words
    spec = make_pairs(["Is water wet?"], [[short, near, long, long]], tmp_path)
    files = dict(part.split("=", 1) for part in spec.split(","))
    rows = {k: [json.loads(line) for line in open(v)] for k, v in files.items()}
    as_pairs = {k: sorted((r["chosen"], r["rejected"]) for r in v) for k, v in rows.items()}
    assert as_pairs["brevity"] == sorted([(short, long), (near, long)])  # the duplicate long answer pairs once
    assert as_pairs["detail"] == sorted([(long, short), (long, near)])
    assert {r["prompt"] for v in rows.values() for r in v} == {"Is water wet?"}
