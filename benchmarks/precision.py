"""bf16 autocast and the attention kernel against float32, on real HH-RLHF batches.

    python benchmarks/precision.py [--model smollm2] [--data HELPFUL.jsonl.gz] [--batch 4] [--length 160]
                                   [--steps 6] [--quick]

``--precision bf16`` runs every forward of the policy under bf16 autocast
(weights, optimizer and summed log-probs stay float32), and ``--attention``
picks the base's attention kernel. This runs the same LoRA + Hyper Prompt
training step and the same no-gradient scoring pass of SmolLM2 on the same
batches of helpful pairs under each setting, in the same run, and prints
the ratio of each median time to float32 with the model's default kernel
(sdpa), with how far the summed response log-probs move from float32's:
the price of the speed, to set against the DPO margins (beta 0.1 times a
few nats).
"""

import torch
from logits_window import bench_args, hh_batches, timed

from cosdpo.losses import response_window, sequence_logprobs
from cosdpo.models.llm import load_base
from cosdpo.training.llm import LLMConfig, build_policy

SETTINGS = (("fp32", "sdpa"), ("fp32", "eager"), ("bf16", "sdpa"), ("bf16", "eager"))


def main():
    a = bench_args(__doc__)
    torch.manual_seed(0)
    base, tokenizer = load_base(a.model)
    policy = build_policy(base, LLMConfig(model=a.model, objectives=("helpful", "harmless"), lora_mix=False), 2)
    w = torch.tensor([0.5, 0.5])
    batches = hh_batches(a.data, tokenizer, a.batch, a.length, a.steps + 1)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    state = {"i": 0}

    def forward(b):
        ids, attn, resp = b["input_ids"], b["attention_mask"], b["response_mask"]
        return sequence_logprobs(policy(ids, attn, w, response_window(resp)), ids, resp)

    def step():
        logp = forward(batches[state["i"] % len(batches)])
        state["i"] += 1
        logp.sum().backward()
        for p in trainable:
            p.grad = None
        return logp.detach()

    @torch.no_grad()
    def score():
        return torch.cat([forward(b) for b in batches[:2]])

    print(f"{a.batch} pairs a step, {torch.get_num_threads()} threads; ratios to fp32 + sdpa (medians of {a.steps})")
    reference = {}
    for precision, attention in SETTINGS:
        policy.set_compute(precision, attention)
        cells = []
        for name, fn in (("training step", step), ("scoring pass", score)):
            state["i"] = 0
            t, logp = timed(fn, a.steps)
            ref_t, ref_logp = reference.setdefault(name, (t, logp))
            err = float((logp - ref_logp).abs().max())
            cells.append(f"{name} {t:.3f} s, ratio {t / ref_t:.3f}, log-probs move by at most {err:.3f} nats")
        print(f"{precision} + {attention}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
