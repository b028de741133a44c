"""Logits for the response window only against logits for every position, on real HH-RLHF batches.

    python benchmarks/logits_window.py [--model smollm2] [--data HELPFUL.jsonl.gz] [--batch 4] [--length 160]
                                       [--steps 6] [--quick]

The LM head and its log-softmax over SmolLM2's 49,152-token vocabulary are
a large share of a step, yet DPO scores only the response tokens: the
policy and the scorer ask the model for the logits of the last
``response_window`` positions (transformers' ``logits_to_keep``). This runs
the same training step (LoRA + Hyper Prompt, float32, CPU) and the same
no-gradient scoring pass both ways on the same batches of helpful pairs, in
the same run, checks that the log-probs agree, and prints the ratios of
median times (window / all positions).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cosdpo.data.preferences import load_preferences
from cosdpo.data.tokenize import PreferenceSet
from cosdpo.losses import response_window, sequence_logprobs
from cosdpo.models.llm import load_base
from cosdpo.training.llm import LLMConfig, build_policy

HELPFUL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful.jsonl.gz"


def timed(fn, steps):
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def hh_batches(path, tokenizer, batch: int, length: int, n: int) -> list[dict]:
    """``n`` batches of ``batch`` helpful HH-RLHF pairs of at most ``length`` tokens, in file order, each
    pair as its two padded sequences."""
    pairs, _ = load_preferences(path, "hh", "helpful")
    data = PreferenceSet.build(pairs[:400], tokenizer, ["helpful"], length)
    return [
        data.pad(np.r_[data.chosen[i * batch : (i + 1) * batch], data.rejected[i * batch : (i + 1) * batch]])
        for i in range(n)
    ]


def bench_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--length", type=int, default=160, help="max tokens per prompt + response")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data", default=str(HELPFUL), help="HH-RLHF pairs (jsonl, gzipped or not)")
    ap.add_argument("--quick", action="store_true", help="2 pairs of at most 96 tokens, 2 steps")
    a = ap.parse_args()
    if a.quick:
        a.batch, a.length, a.steps = 2, 96, 2
    return a


def main():
    a = bench_args(__doc__)
    torch.manual_seed(0)
    base, tokenizer = load_base(a.model)
    cfg = LLMConfig(model=a.model, objectives=("helpful", "harmless"), lora_mix=False)  # as docs/results/speed.md
    policy = build_policy(base, cfg, 2)
    w = torch.tensor([0.5, 0.5])
    batches = hh_batches(a.data, tokenizer, a.batch, a.length, a.steps + 1)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    state = {"i": 0}

    def step(window):
        def run():
            b = batches[state["i"] % len(batches)]
            state["i"] += 1
            ids, attn, resp = b["input_ids"], b["attention_mask"], b["response_mask"]
            logp = sequence_logprobs(policy(ids, attn, w, response_window(resp) if window else 0), ids, resp)
            logp.sum().backward()
            for p in trainable:
                p.grad = None
            return logp.detach()

        return run

    def score(window):
        @torch.no_grad()
        def run():
            b = batches[0]
            ids, attn, resp = b["input_ids"], b["attention_mask"], b["response_mask"]
            return sequence_logprobs(policy(ids, attn, w, response_window(resp) if window else 0), ids, resp)

        return run

    lengths = [int(b["attention_mask"].sum(1).max()) for b in batches]
    windows = [response_window(b["response_mask"]) for b in batches]
    print(
        f"{a.batch} pairs a step, padded length {statistics.median(lengths):.0f}, response window "
        f"{statistics.median(windows):.0f} (medians)"
    )
    rows = {}
    for name, make in (("training step", step), ("scoring pass", score)):
        state["i"] = 0
        t_all, lp_all = timed(make(False), a.steps)
        state["i"] = 0
        t_win, lp_win = timed(make(True), a.steps)
        err = float((lp_all - lp_win).abs().max())
        rows[name] = t_win / t_all
        print(
            f"{name}: all positions {t_all:.3f} s, response window {t_win:.3f} s, ratio {t_win / t_all:.3f} "
            f"(log-probs differ by at most {err:.2e})"
        )
        if err > 1e-3:
            sys.exit(f"{name}: the two ways disagree by {err}")


if __name__ == "__main__":
    main()
