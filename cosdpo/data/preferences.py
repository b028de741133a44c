"""Pairwise preference data for LLM alignment, one loader per real format.

Every loader yields the same record: a prompt as chat messages (so that the
tokenizer's own chat template can be applied later), a chosen and a
rejected response, the objective the pair is judged on, and where it came
from (file:line). Rows that cannot serve (a missing field, an empty prompt,
identical responses) are counted by reason in a ``LoadReport``, with the
first few places named, never dropped silently.

Formats:
- ``pku``: PKU-SafeRLHF jsonl; each row judges both objectives:
  ``better_response_id`` -> helpful, ``safer_response_id`` -> harmless.
  ``pku_filter="safety-contrast"`` keeps a row's harmless pair only when its
  ``is_response_0_safe`` / ``is_response_1_safe`` flags differ (one safe
  answer against one unsafe one), the filter safety-alignment work applies
  to PKU-SafeRLHF; the helpful pairs stay. ``none`` (the paper's setting)
  keeps both pairs of every row.
- ``hh``: Anthropic HH-RLHF jsonl (optionally .gz), one objective per file;
  ``chosen``/``rejected`` are whole dialogues, and the prompt is their shared
  prefix up to the last "Assistant:" turn.
- ``jsonl``: ``{"prompt", "chosen", "rejected"}`` per line, one objective per
  file; the prompt is a string or a list of chat messages.
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("pku", "hh", "jsonl")
PKU_FILTERS = ("none", "safety-contrast")
PKU_OBJECTIVES = {"helpful": "better_response_id", "harmless": "safer_response_id"}
SHORTENED = "with the prompt cut to its last turns to fit max_length"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class PreferencePair:
    objective: str
    prompt: tuple  # chat messages: ({"role": ..., "content": ...}, ...)
    chosen: str
    rejected: str
    source: str  # file:line


@dataclass
class LoadReport:
    kept: Counter = field(default_factory=Counter)  # objective -> pairs
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    examples: dict = field(default_factory=dict)  # reason -> first places
    shortened: int = 0  # kept pairs whose prompt lost its earliest turns to fit max_length

    def skip(self, reason: str, where: str):
        self.skipped[reason] += 1
        self._example(reason, where)

    def shorten(self, where: str):
        self.shortened += 1
        self._example(SHORTENED, where)

    def _example(self, key: str, where: str):
        self.examples.setdefault(key, [])
        if len(self.examples[key]) < 3:
            self.examples[key].append(where)

    def summary(self) -> str:
        kept = ", ".join(f"{n} {obj}" for obj, n in sorted(self.kept.items())) or "none"
        lines = [f"kept pairs: {kept}"]
        for reason, n in self.skipped.most_common():
            lines.append(f"skipped {counted(n, 'row')}: {reason} (e.g. {', '.join(self.examples[reason])})")
        if self.shortened:
            examples = ", ".join(self.examples[SHORTENED])
            lines.append(f"kept {counted(self.shortened, 'pair')} {SHORTENED} (e.g. {examples})")
        return "\n".join(lines)


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _rows(path: Path):
    """(line number, text) of every non-blank line; a line that is not UTF-8 comes as the error."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, exc
                continue
            if line.strip():
                yield lineno, line


def _messages(value) -> list[dict] | None:
    """A prompt as chat messages: a string, or a list of {"role": str, "content": str}; None if neither."""
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}]
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    return [{"role": m["role"], "content": m["content"]} for m in value] if ok else None


def _response(value) -> str | None:
    """A response: a string, or TRL's conversational form (messages ending in the assistant's); else None."""
    if isinstance(value, str):
        return value
    messages = _messages(value) if isinstance(value, list) else None
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def _keep(pairs, report, objective, prompt, chosen, rejected, where):
    if not prompt or not any(m["content"].strip() for m in prompt):
        return report.skip("empty prompt", where)
    if not chosen.strip() or not rejected.strip():
        return report.skip("empty response", where)
    if chosen.strip() == rejected.strip():
        return report.skip("identical responses", where)
    report.kept[objective] += 1
    pairs.append(PreferencePair(objective, tuple(prompt), chosen, rejected, where))


def split_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{user: a}, {assistant: b}]."""
    parts = _TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def hh_prompt_and_responses(chosen: str, rejected: str):
    """Cut two HH dialogues at their shared prefix's last 'Assistant:' turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind("\n\nAssistant:", 0, n)  # the marker wholly inside the shared prefix
    if cut < 0:
        return None
    cut += len("\n\nAssistant:")
    prompt = split_dialogue(chosen[:cut])[:-1]  # the last turn is the empty "Assistant:" to be answered
    return prompt, chosen[cut:].strip(), rejected[cut:].strip()


def format_of(row) -> str | None:
    """pku, hh or jsonl from one row's fields (hh also covers TRL's implicit-prompt rows); None if none fits."""
    if isinstance(row, dict):
        if "better_response_id" in row or "safer_response_id" in row:
            return "pku"
        if "prompt" in row:
            return "jsonl"
        if "chosen" in row:
            return "hh"
    return None


def detect_format(path) -> str:
    """pku, hh or jsonl, from the first row of a file."""
    for _, line in _rows(Path(path)):
        try:
            found = format_of(json.loads(line))
        except (json.JSONDecodeError, TypeError):
            found = None
        if found:
            return found
        break
    raise ValueError(f"{path}: cannot tell its format from the first row; pass --format pku|hh|jsonl")


def _hf_rows(spec: str):
    """``hf:NAME[@SPLIT]``: a Hugging Face hub dataset, or a local dataset folder, row by row."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ImportError("hf: data needs the datasets package: pip install datasets") from exc
    name, _, split = spec[3:].partition("@")
    try:
        rows = load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many kinds (no such dataset, a loading script, no network)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{spec}: cannot load this dataset ({first})") from None
    for i, row in enumerate(rows, start=1):
        yield f"{spec}:{i}", row


def _file_rows(path: Path):
    for lineno, line in _rows(path):
        where = f"{path}:{lineno}"
        if isinstance(line, UnicodeDecodeError):
            yield where, line
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, exc


def _check_format(fmt: str | None, objective: str | None):
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; choose one of {FORMATS}")
    if fmt is not None and fmt != "pku" and not objective:
        raise ValueError(f"a {fmt} file is judged on one objective: name it (e.g. helpful=PATH)")


def load_preferences(
    path, fmt: str | None = None, objective: str | None = None, report: LoadReport | None = None, pku_filter="none"
):
    """Read one file (or ``hf:NAME[@SPLIT]``) into ``PreferencePair`` records; returns (pairs, report).

    ``fmt`` None detects the format from the first row of a file.
    """
    source = str(path)
    is_hf = source.startswith("hf:")
    _check_format(fmt, objective)  # bad arguments fail before the file is opened
    if not is_hf and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = _hf_rows(source) if is_hf else _file_rows(Path(path))
    if fmt is None and is_hf:  # as for files: from the first row
        first = next(rows, None)
        fmt = (format_of(first[1]) if first else None) or "jsonl"
        rows = itertools.chain([first] if first else [], rows)
    fmt = fmt or detect_format(path)
    _check_format(fmt, objective)
    report = report or LoadReport()
    pairs: list[PreferencePair] = []
    need = {
        "pku": ("prompt", "response_0", "response_1", *PKU_OBJECTIVES.values()),
        "hh": ("chosen", "rejected"),
        "jsonl": ("prompt", "chosen", "rejected"),
    }[fmt]
    for where, row in rows:
        if isinstance(row, json.JSONDecodeError):
            report.skip(f"not JSON ({row.msg})", where)
            continue
        if isinstance(row, UnicodeDecodeError):
            report.skip("not UTF-8 text", where)
            continue
        missing = [k for k in need if not isinstance(row, dict) or row.get(k) is None]
        if missing:
            report.skip(f"missing field {missing[0]!r}", where)
            continue
        if fmt == "pku":
            if not all(isinstance(row[k], str) for k in ("prompt", "response_0", "response_1")):
                report.skip("prompt or response is not text", where)
                continue
            prompt = [{"role": "user", "content": row["prompt"].strip()}]
            for obj, key in PKU_OBJECTIVES.items():
                if row[key] not in (0, 1) or isinstance(row[key], bool):
                    report.skip(f"{key} is not 0 or 1", where)
                    continue
                if obj == "harmless" and pku_filter == "safety-contrast":
                    flags = [row.get(f"is_response_{i}_safe") for i in (0, 1)]
                    if not all(isinstance(f, bool) for f in flags):
                        report.skip("harmless pair without is_response_0_safe / is_response_1_safe flags", where)
                        continue
                    if flags[0] == flags[1]:
                        report.skip("harmless pair left out: both answers equally safe (safety-contrast)", where)
                        continue
                good, bad = row[f"response_{row[key]}"], row[f"response_{1 - row[key]}"]
                _keep(pairs, report, obj, prompt, good, bad, where)
        elif fmt == "hh":
            chosen, rejected = row["chosen"], row["rejected"]
            if isinstance(chosen, str) and isinstance(rejected, str):
                cut = hh_prompt_and_responses(chosen, rejected)
                if cut is None:
                    report.skip("no shared 'Assistant:' turn", where)
                    continue
                _keep(pairs, report, objective, *cut, where)
                continue
            # TRL's implicit-prompt conversational form: two dialogues sharing all but the last message
            c, r = (
                _messages(chosen) if isinstance(chosen, list) else None,
                _messages(rejected) if isinstance(rejected, list) else None,
            )
            if not c or not r or c[:-1] != r[:-1] or _response(c) is None or _response(r) is None:
                report.skip("chosen and rejected are not two dialogues differing in the last answer", where)
                continue
            _keep(pairs, report, objective, c[:-1], _response(c), _response(r), where)
        else:
            prompt, chosen, rejected = _messages(row["prompt"]), _response(row["chosen"]), _response(row["rejected"])
            if prompt is None:
                report.skip("prompt is neither text nor chat messages with role and content", where)
                continue
            if chosen is None or rejected is None:
                report.skip("a response is neither text nor messages ending in the assistant's", where)
                continue
            _keep(pairs, report, objective, prompt, chosen, rejected, where)
    return pairs, report


def load_many(spec: str, fmt: str | None = None, pku_filter: str = "none"):
    """``helpful=a.jsonl,harmless=b.jsonl`` or one PKU-SafeRLHF path -> (pairs, objectives, report)."""
    if pku_filter not in PKU_FILTERS:
        raise ValueError(f"pku_filter must be one of {', '.join(PKU_FILTERS)}; got {pku_filter!r}")
    report, pairs, objectives = LoadReport(), [], []
    for objective, path in parse_data_spec(spec):
        before = Counter(report.skipped)
        got, _ = load_preferences(path, fmt, objective, report, pku_filter)
        if not got:
            skipped = (report.skipped - before).most_common()
            reasons = "; ".join(f"{counted(n, 'row')}: {r}" for r, n in skipped) or "no rows"
            raise ValueError(f"{path}: no usable preference pairs ({reasons}); is --format right?")
        pairs += got
        for o in [objective] if objective else list(PKU_OBJECTIVES):
            if o not in objectives:
                objectives.append(o)
    return pairs, objectives, report


def split_pairs(pairs, fraction: float, seed: int = 0):
    """(train, held-out) with every prompt on one side only, so held-out prompts are unseen."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    prompts = sorted({json.dumps(p.prompt, sort_keys=True) for p in pairs})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(prompts, size=max(1, round(fraction * len(prompts))), replace=False).tolist())
    train = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) not in held]
    return train, [p for p in pairs if json.dumps(p.prompt, sort_keys=True) in held]


def parse_data_spec(text: str) -> list[tuple[str | None, str]]:
    """``helpful=a.jsonl,harmless=b.jsonl`` -> [(objective, path), ...]; a bare PATH has no objective."""
    out = []
    for part in text.split(","):
        obj, sep, path = part.partition("=")
        out.append((obj.strip(), path.strip()) if sep else (None, obj.strip()))
    names = [o for o, _ in out if o]
    twice = sorted({o for o in names if names.count(o) > 1})
    if twice:
        raise ValueError(f"--data names objective {twice[0]!r} twice: give one file per objective")
    return out
