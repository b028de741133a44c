"""One Weight-COS-DPO step against one TRL DPOTrainer step, same model, LoRA, batch and length.

    pip install -e ".[bench]"      # trl 1.16.0
    python benchmarks/trl_step.py [--model smollm2] [--data HELPFUL.jsonl.gz] [--batch 4] [--length 128]
                                  [--steps 8] [--trl-checkpointing] [--quick]

Both on CPU in float32, in the same run, each making one pass over the same
HH-RLHF pairs (helpful), LoRA rank 8 on q/k/v/o, no gradient checkpointing
(TRL's DPOConfig turns it on by default, which recomputes the forward in the
backward; ``--trl-checkpointing`` keeps TRL's default). TRL runs twice: as
configured by default (a reference forward of the base inside every step)
and with ``precompute_ref_log_probs=True`` (one reference pass before
training, like ours). Ours reads the reference from its once-per-dataset
cache, scores each pair's prompt once for both responses, and adds the
w-conditioned prompt. Figures: the ratio of median step times (steps after
the first, which warms up), and of one epoch: the steps plus each one's
reference pass (later epochs do not pay it again).
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from cosdpo.data.preferences import load_preferences
from cosdpo.models.llm import attention_targets, load_base, resolve_model
from cosdpo.training.llm import LLMConfig, finetune_llm

HELPFUL = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful.jsonl.gz"


def pairs_for(path, tokenizer, n, length):
    """n HH pairs whose chat-templated prompt + longer response fit in ``length`` tokens."""
    pairs, _ = load_preferences(path, "hh", "helpful")
    out = []
    for p in pairs:
        prompt = tokenizer.apply_chat_template(list(p.prompt), add_generation_prompt=True, tokenize=False)
        n_tok = len(tokenizer(prompt + max(p.chosen, p.rejected, key=len))["input_ids"]) + 1
        if n_tok <= length:
            out.append(
                {
                    "prompt": list(p.prompt),
                    "chosen": [{"role": "assistant", "content": p.chosen}],
                    "rejected": [{"role": "assistant", "content": p.rejected}],
                    "pair": p,
                }
            )
        if len(out) == n:
            return out
    raise SystemExit("not enough short pairs")


def now() -> float:
    """The time once the GPU has finished what was queued: CUDA calls return before their kernels run, so
    a step timed without waiting would read its launch overhead, not its work."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def clocked(fn, into):
    """``fn``, appending the seconds of each call to ``into``."""

    def run(*a, **k):
        t = now()
        out = fn(*a, **k)
        into.append(now() - t)
        return out

    return run


def time_trl(model_name, rows, batch, length, steps, checkpointing, device="cpu", precision="fp32", precompute=False):
    """TRL's step times, and the seconds of its reference pass with ``precompute`` (else 0: the
    reference forward runs inside every step)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = load_base(model_name)
    model.requires_grad_(True)
    times, reference = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = now()

        def on_step_end(self, *a, **k):
            times.append(now() - self.t)

    args = DPOConfig(
        output_dir="/tmp/trl-bench",
        per_device_train_batch_size=batch,
        max_steps=steps,
        max_length=length,
        beta=0.1,
        learning_rate=5e-4,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        gradient_checkpointing=checkpointing,
        precompute_ref_log_probs=precompute,
    )
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    pass_ = DPOTrainer._precompute_ref_logps
    DPOTrainer._precompute_ref_logps = clocked(pass_, reference)
    try:
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            callbacks=[Clock()],
            peft_config=LoraConfig(
                r=8,
                lora_alpha=16,
                target_modules=list(attention_targets(model)),
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
            ),
        )
        trainer.train()
    finally:
        DPOTrainer._precompute_ref_logps = pass_
    return times, sum(reference)


def time_ours(model_name, rows, batch, length, steps, precision="fp32"):
    import json
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "helpful.jsonl", "w") as f:
        for r in rows:
            p = r["pair"]
            f.write(json.dumps({"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    # one shared LoRA and one w per step: the same adapter and loss shape as TRL's
    cfg = LLMConfig(
        model=model_name,
        max_steps=steps,
        batch_size=batch,
        max_length=length,
        held_out=0.01,
        val_pairs=1,
        val_every=10**6,
        progress=False,
        lr=5e-4,
        lora_mix=False,
        weight_sampling="step",
        prompt_lr=0.0,
        precision=precision,
    )
    times, reference = [], []
    import cosdpo.training.llm as llm
    import cosdpo.training.loop as loop

    step, ref = loop.train_step, llm.reference_logprobs
    loop.train_step, llm.reference_logprobs = clocked(step, times), clocked(ref, reference)
    try:
        finetune_llm(f"helpful={tmp / 'helpful.jsonl'}", tmp / "out", cfg, log=lambda s: None)
    finally:
        loop.train_step, llm.reference_logprobs = step, ref
    return times, sum(reference)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--trl-checkpointing", action="store_true", help="keep TRL's default gradient checkpointing")
    ap.add_argument("--data", default=str(HELPFUL), help="HH-RLHF pairs (jsonl, gzipped or not)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: both trainers on the GPU")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="both trainers' precision")
    ap.add_argument("--quick", action="store_true", help="2 steps of 2 pairs of at most 96 tokens")
    a = ap.parse_args()
    if a.device == "cpu":  # ours trains wherever Accelerate finds a device: hide the GPU from both trainers
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        raise SystemExit("trl_step: no CUDA device visible to torch (use --device cpu)")
    if a.quick:
        a.batch, a.length, a.steps = 2, 96, 2
    torch.manual_seed(0)
    name = resolve_model(a.model)
    _, tok = load_base(name)
    rows = pairs_for(a.data, tok, a.batch * a.steps, a.length)
    ours, reference = time_ours(name, rows, a.batch, a.length, a.steps, a.precision)
    trl, _ = time_trl(name, rows, a.batch, a.length, a.steps, a.trl_checkpointing, a.device, a.precision)
    cached, cached_pass = time_trl(
        name, rows, a.batch, a.length, a.steps, a.trl_checkpointing, a.device, a.precision, True
    )
    o, t, c = (statistics.median(x[1:]) for x in (ours, trl, cached))
    print(
        f"model {a.model}, batch {a.batch} pairs, <= {a.length} tokens, {a.steps} steps = one pass over "
        f"{len(rows)} pairs, LoRA r=8, {a.device} {a.precision}, {torch.get_num_threads()} threads, TRL gradient "
        f"checkpointing {'on' if a.trl_checkpointing else 'off'}"
    )
    print(f"Weight-COS-DPO step {o:.2f} s (steps {[round(x, 2) for x in ours]}); reference pass {reference:.2f} s")
    print(f"TRL DPOTrainer step {t:.2f} s, the reference forward in every step (steps {[round(x, 2) for x in trl]})")
    print(
        f"TRL DPOTrainer step {c:.2f} s with precompute_ref_log_probs (steps {[round(x, 2) for x in cached]}); "
        f"reference pass {cached_pass:.2f} s"
    )
    print(f"ratio ours / TRL, median step: {o / c:.3f} against TRL with its reference cached, {o / t:.3f} without")
    epoch = sum(ours) + reference
    print(
        f"ratio ours / TRL, one epoch (steps and reference pass): {epoch / (sum(cached) + cached_pass):.3f}"
        f" against TRL with its reference cached, {epoch / sum(trl):.3f} without"
    )
