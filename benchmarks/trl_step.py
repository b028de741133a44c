"""One Weight-COS-DPO step against one TRL DPOTrainer step, same model, LoRA, batch and length.

    pip install -e ".[bench]"      # trl 1.16.0
    python benchmarks/trl_step.py [--model smollm2] [--batch 4] [--length 128] [--steps 4]

Both on CPU in float32, in the same run, on the same HH-RLHF pairs (helpful),
LoRA rank 8 on q/k/v/o. TRL computes the reference log-probs with a forward
of the base every step; ours reads them from the once-per-dataset cache and
adds the w-conditioned prompt. The figure is the ratio of median step times
(steps after the first, which warms up). Prints seconds per step and the ratio.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from cosdpo.data.preferences import load_preferences
from cosdpo.models.llm import LORA_TARGETS, load_base, resolve_model
from cosdpo.training.llm import LLMConfig, finetune_llm

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"


def pairs_for(tokenizer, n, length):
    """n HH pairs whose chat-templated prompt + longer response fit in ``length`` tokens."""
    pairs, _ = load_preferences(HH / "helpful.jsonl.gz", "hh", "helpful")
    out = []
    for p in pairs:
        prompt = tokenizer.apply_chat_template(list(p.prompt), add_generation_prompt=True, tokenize=False)
        n_tok = len(tokenizer(prompt + max(p.chosen, p.rejected, key=len))["input_ids"]) + 1
        if n_tok <= length:
            out.append({"prompt": list(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
                        "rejected": [{"role": "assistant", "content": p.rejected}], "pair": p})
        if len(out) == n:
            return out
    raise SystemExit("not enough short pairs")


def time_trl(model_name, rows, batch, length, steps):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tok = load_base(model_name)
    model.requires_grad_(True)
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    args = DPOConfig(output_dir="/tmp/trl-bench", per_device_train_batch_size=batch, max_steps=steps,
                     max_length=length, beta=0.1, learning_rate=5e-4, use_cpu=True, bf16=False,
                     report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0)
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()],
                         peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS),
                                                lora_dropout=0.0, task_type="CAUSAL_LM"))
    trainer.train()
    return times


def time_ours(model_name, rows, batch, length, steps):
    import json
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    with open(tmp / "helpful.jsonl", "w") as f:
        for r in rows:
            p = r["pair"]
            f.write(json.dumps({"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    cfg = LLMConfig(model=model_name, max_steps=steps, batch_size=batch, max_length=length, held_out=0.01,
                    val_pairs=1, val_every=10**6, progress=False, lr=5e-4)
    times = []
    import cosdpo.training.loop as loop

    step = loop._step

    def timed(*a, **k):
        t = time.perf_counter()
        out = step(*a, **k)
        times.append(time.perf_counter() - t)
        return out

    loop._step = timed
    try:
        finetune_llm(f"helpful={tmp / 'helpful.jsonl'}", tmp / "out", cfg, log=lambda s: None)
    finally:
        loop._step = step
    return times


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    name = resolve_model(a.model)
    _, tok = load_base(name)
    rows = pairs_for(tok, a.batch * (a.steps + 2), a.length)
    ours = time_ours(name, rows, a.batch, a.length, a.steps)
    trl = time_trl(name, rows, a.batch, a.length, a.steps)
    o, t = statistics.median(ours[1:]), statistics.median(trl[1:])
    print(f"model {a.model}, batch {a.batch} pairs, <= {a.length} tokens, LoRA r=8, CPU float32, "
          f"{torch.get_num_threads()} threads")
    print(f"Weight-COS-DPO step {o:.2f} s (steps {[round(x, 2) for x in ours]})")
    print(f"TRL DPOTrainer step {t:.2f} s (steps {[round(x, 2) for x in trl]})")
    print(f"ratio ours / TRL = {o / t:.3f} (target <= 0.8)")
