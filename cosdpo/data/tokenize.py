"""Preference pairs -> token ids, through a chat template.

The prompt (chat messages) goes through ``apply_chat_template`` with the
generation prompt; the response follows, closed by EOS. The template is the
tokenizer's own (``chat``) or a named one set on the tokenizer
(``use_prompt_template``) for base models that have none. Only response tokens
count in a sequence's log-probability (``response_mask``), so the prompt
template can change without changing what is learned.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

PROMPT_TEMPLATE_CHOICES = ("chat", "pku", "plain")
# Jinja chat templates for tokenizers without one: PKU-SafeRLHF's own conversation format, and the bare text
PROMPT_TEMPLATES = {
    "pku": (
        "BEGINNING OF CONVERSATION:{% for m in messages %}"
        "{% if m['role'] == 'assistant' %} ASSISTANT: {{ m['content'] }}{{ eos_token }}"
        "{% else %} {{ 'USER' if m['role'] == 'user' else m['role'] | upper }}: {{ m['content'] }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    ),
    "plain": "{% for m in messages %}{{ m['content'] }}{% if not loop.last %}\n\n{% endif %}{% endfor %}",
}


def use_prompt_template(tokenizer, name: str, model: str = "the model"):
    """Set the tokenizer's chat template to ``name`` (``chat`` keeps its own; a tokenizer without one
    needs another name). The tokenizer is saved with the policy, so fronts and generation use it too."""
    if name not in PROMPT_TEMPLATE_CHOICES:
        raise ValueError(f"prompt_template must be one of {', '.join(PROMPT_TEMPLATE_CHOICES)}; got {name!r}")
    if name == "chat":
        if tokenizer.chat_template is None:
            raise ValueError(f"{model}: the tokenizer has no chat template; pass --prompt-template pku or plain")
        return tokenizer
    tokenizer.chat_template = PROMPT_TEMPLATES[name]
    return tokenizer


def _ids(out) -> list[int]:
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt (a string or chat messages) through the tokenizer's chat template, ready for an answer."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def encode_pair(tokenizer, prompt, chosen: str, rejected: str, max_length: int, truncate: bool = True):
    """(prompt ids, chosen ids, rejected ids, prompt shortened?), or None when the pair cannot fit in
    ``max_length`` tokens.

    With ``truncate``, a dialogue too long to fit loses its earliest turns,
    whole, down to the last user turn: multi-turn data (HH-RLHF) has long
    histories whose latest question is what the two responses answer, and
    dropping those pairs instead throws away half of them at short lengths.
    Whole turns keep the chat template intact (a leading system message is
    kept), and both responses get the same prompt, so the pair still
    compares two answers to one question.
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    c, r = (_ids(tokenizer(x, add_special_tokens=False)) + [tokenizer.eos_token_id] for x in (chosen, rejected))
    starts = [len(system)] + (
        [i for i in range(len(system) + 1, len(messages)) if messages[i]["role"] == "user"] if truncate else []
    )
    for start in starts:
        p = prompt_ids(tokenizer, system + messages[start:])
        if len(p) + max(len(c), len(r)) <= max_length:
            return p, c, r, start > len(system)
    return None


def pad_sequences(encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` (B, T)."""
    T = max(len(p) + len(r) for p, r in encoded)
    ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encoded), T), dtype=torch.long)
    resp = torch.zeros((len(encoded), T), dtype=torch.bool)
    for i, (p, r) in enumerate(encoded):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        resp[i, len(p) : len(p) + len(r)] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}


PROMPT, CHOSEN, REJECTED = 1, 2, 3  # segments of a packed pair; 0 is padding


def pack_pairs(triples, pad_id: int) -> dict[str, torch.Tensor]:
    """One right-padded row per pair: its prompt once, then the chosen response, then the rejected one.

    Why: a pair's two sequences share their prompt, and prompts (dialogue
    histories) are most of the tokens: on HH-RLHF pairs of at most 128
    tokens, 64% of a pair's tokens are its prompt twice. Scoring the prompt
    once, with the rejected response attending to the prompt but not to the
    chosen one and placed at the chosen one's positions, gives each response
    the log-probs of its own padded sequence with 0.6 of the tokens.

    Returns ``input_ids``, ``position_ids``, ``segment`` (B, T) and, for
    each response, ``{chosen,rejected}_at`` (B, L): the position whose logits
    predict each response token, ``_ids`` its token, ``_mask`` which are
    real. The rejected response's first token is predicted at the prompt's
    last position, as the chosen one's is.
    """
    B = len(triples)
    T = max(len(p) + len(c) + len(r) for p, c, r in triples)
    Lc, Lr = max(len(c) for _, c, _ in triples), max(len(r) for _, _, r in triples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.zeros((B, T), dtype=torch.int8)
    out = {}
    for side, L in (("chosen", Lc), ("rejected", Lr)):
        out[f"{side}_at"], out[f"{side}_ids"] = torch.zeros((2, B, L), dtype=torch.long)
        out[f"{side}_mask"] = torch.zeros((B, L), dtype=torch.bool)
    for i, (p, c, r) in enumerate(triples):
        P, C, R = len(p), len(c), len(r)
        ids[i, : P + C + R] = torch.tensor(p + c + r)
        pos[i, : P + C] = torch.arange(P + C)
        pos[i, P + C : P + C + R] = torch.arange(P, P + R)
        seg[i, :P], seg[i, P : P + C], seg[i, P + C : P + C + R] = PROMPT, CHOSEN, REJECTED
        out["chosen_at"][i, :C] = torch.arange(P - 1, P + C - 1)
        out["rejected_at"][i, :R] = torch.cat([torch.tensor([P - 1]), torch.arange(P + C, P + C + R - 1)])
        out["chosen_ids"][i, :C], out["rejected_ids"][i, :R] = torch.tensor(c), torch.tensor(r)
        out["chosen_mask"][i, :C], out["rejected_mask"][i, :R] = True, True
    return out | {"input_ids": ids, "position_ids": pos, "segment": seg}


class PreferenceSet:
    """Tokenised preference pairs, ready for the training loop and the evaluation.

    Sequences (prompt + response) are stored once each: a PKU-SafeRLHF pair
    judged on two objectives, or HH pairs sharing a response, cost one
    scoring forward per distinct sequence (``pad``, for the reference and
    fronts). A record is (chosen sequence, rejected sequence, objective).
    ``ref`` holds the frozen reference's log-prob per sequence once
    computed, so the reference forward runs once per dataset.

    The loop's data protocol is that of ``RankingSet``: ``epoch_batches``
    gives lists of record indices, ``batch`` turns one into tensors (pairs
    packed a row each, for the training step).
    """

    def __init__(self, sequences, chosen, rejected, objective, objectives, pad_id: int, sources=()):
        self.sequences = list(sequences)  # [(prompt ids, response ids)]
        self.chosen = np.asarray(chosen, dtype=np.int64)
        self.rejected = np.asarray(rejected, dtype=np.int64)
        self.objective = np.asarray(objective, dtype=np.int64)
        self.objectives = list(objectives)
        self.pad_id = pad_id
        self.sources = list(sources)
        self.ref: np.ndarray | None = None
        self.margin: np.ndarray | None = None  # per record: MO-DPO's margin from the other objectives' models
        self.lengths = np.array([len(p) + len(r) for p, r in self.sequences], dtype=np.int64)

    @classmethod
    def build(cls, pairs, tokenizer, objectives, max_length: int, report=None, truncate: bool = True) -> PreferenceSet:
        """Encode ``pairs`` (see ``encode_pair``); ``report`` counts the pairs whose prompt was cut to its
        last turns and those that still do not fit in ``max_length`` tokens."""
        index: dict = {}
        seqs, chosen, rejected, objective, sources = [], [], [], [], []

        def seq_id(prompt, response):
            key = (tuple(prompt), tuple(response))
            if key not in index:
                index[key] = len(seqs)
                seqs.append((prompt, response))
            return index[key]

        for pair in pairs:
            if pair.objective not in objectives:
                continue
            enc = encode_pair(tokenizer, pair.prompt, pair.chosen, pair.rejected, max_length, truncate)
            if enc is None:
                if report is not None:
                    report.skip(f"longer than {max_length} tokens", pair.source)
                    report.kept[pair.objective] -= 1
                continue
            p, c, r, shortened = enc
            if shortened and report is not None:
                report.shorten(pair.source)
            chosen.append(seq_id(p, c))
            rejected.append(seq_id(p, r))
            objective.append(objectives.index(pair.objective))
            sources.append(pair.source)
        return cls(seqs, chosen, rejected, objective, objectives, tokenizer.pad_token_id, sources)

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, records) -> PreferenceSet:
        """The given records, with only the sequences (and reference log-probs) they use."""
        records = np.asarray(records, dtype=np.int64)
        used = np.unique(np.concatenate([self.chosen[records], self.rejected[records]]))
        remap = np.full(len(self.sequences), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        out = PreferenceSet(
            [self.sequences[i] for i in used],
            remap[self.chosen[records]],
            remap[self.rejected[records]],
            self.objective[records],
            self.objectives,
            self.pad_id,
            [self.sources[i] for i in records] if self.sources else [],
        )
        out.ref = None if self.ref is None else self.ref[used]
        out.margin = None if self.margin is None else self.margin[records]
        return out

    def counts(self) -> dict[str, int]:
        return {name: int((self.objective == k).sum()) for k, name in enumerate(self.objectives)}

    def epoch_batches(self, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        """Shuffled batches of records of similar length (less padding), in a shuffled order;
        the same for a given (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self))
        size = self.lengths[np.maximum(self.chosen, self.rejected)[order]]
        chunk = 16 * batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk][np.argsort(size[start : start + chunk], kind="stable")]
            batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def sequence_batches(self, max_tokens: int = 4096):
        """All sequences in length order, as lists of ids whose padded size fits ``max_tokens``."""
        order = np.argsort(self.lengths, kind="stable")
        batches, current = [], []
        for i in order:
            if current and (len(current) + 1) * self.lengths[i] > max_tokens:
                batches.append(current)
                current = []
            current.append(int(i))
        return batches + ([current] if current else [])

    def pad(self, seq_ids, device="cpu") -> dict:
        out = pad_sequences([self.sequences[i] for i in seq_ids], self.pad_id)
        return {k: v.to(device) for k, v in out.items()}

    def batch(self, records, device="cpu") -> dict:
        """The records' pairs packed one a row (``pack_pairs``), with their objectives and, once known,
        the reference log-probs ``ref`` (B, 2: chosen, rejected) and MO-DPO's ``margin``."""
        records = np.asarray(records, dtype=np.int64)
        triples = [
            (self.sequences[c][0], self.sequences[c][1], self.sequences[r][1])
            for c, r in zip(self.chosen[records], self.rejected[records])
        ]
        out = pack_pairs(triples, self.pad_id) | {
            "objective": torch.as_tensor(self.objective[records]),
            "records": torch.as_tensor(records),
        }
        if self.ref is not None:
            pairs = [self.ref[self.chosen[records]], self.ref[self.rejected[records]]]
            out["ref"] = torch.as_tensor(np.stack(pairs, axis=1))
        if self.margin is not None:
            out["margin"] = torch.as_tensor(self.margin[records])
        return {k: v.to(device) for k, v in out.items()}
