"""Preference pairs -> token ids, with the tokenizer's own chat template.

The prompt (chat messages) goes through ``apply_chat_template`` with the
generation prompt; the response follows, closed by EOS. Only response tokens
count in a sequence's log-probability (``response_mask``), so the prompt
template can change without changing what is learned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def _ids(out) -> list[int]:
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def encode(tokenizer, prompt, response: str, max_length: int):
    """(prompt ids, response ids), or None when the pair does not fit in ``max_length`` tokens."""
    p = _ids(tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True))
    r = _ids(tokenizer(response, add_special_tokens=False)) + [tokenizer.eos_token_id]
    return None if len(p) + len(r) > max_length else (p, r)


def pad_sequences(encoded, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` (B, T)."""
    T = max(len(p) + len(r) for p, r in encoded)
    ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(encoded), T), dtype=torch.long)
    resp = torch.zeros((len(encoded), T), dtype=torch.bool)
    for i, (p, r) in enumerate(encoded):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attn[i, :len(p) + len(r)] = 1
        resp[i, len(p):len(p) + len(r)] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}
