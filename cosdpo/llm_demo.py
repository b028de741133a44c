"""``cosdpo llm demo``: one conditioned LLM whose behaviour follows w, offline, on a CPU.

1. The real SmolLM2-135M-Instruct samples several answers per prompt: half
   to the plain question, half to the question with "Answer in one
   sentence." appended, so that complete short answers exist next to long
   ones (its plain answers run past any budget a CPU demo can afford, and
   answers cut at the same budget differ by a word or two: no signal).
2. Two programmatic objectives label them: ``brevity`` (fewer words) and
   ``detail`` (more distinct words), which conflict. Every pair of answers
   to the same plain question whose scores differ by at least ``MIN_GAP``
   becomes a preference pair for that objective, written as plain jsonl
   files (the generic format users bring).
3. Weight-COS-DPO (LoRA + Hyper Prompt Tuning) trains on both files.
4. On held-out prompts, greedy answers under w = (1,0), (0.5,0.5), (0,1), and
   the base, are scored by the same two objectives: a generation front.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .atomic import write_json
from .evaluation.plot import plot_fronts
from .evaluation.preference import generation_front
from .generation import generate
from .models.hpt import HPTModel
from .models.llm import DEFAULT_MODEL, load_base
from .training.llm import LLMConfig, finetune_llm

TRAIN_PROMPTS = [
    "What is photosynthesis?",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
    "What is a black hole?",
    "How do vaccines work?",
    "What causes rain?",
    "How does a bicycle stay upright?",
    "What is inflation?",
    "Why do cats purr?",
    "How do airplanes fly?",
    "What is machine learning?",
    "How do bees make honey?",
    "What is the moon made of?",
    "Why do leaves change colour in autumn?",
    "How does a fridge keep food cold?",
    "What is a volcano?",
    "How do I start running?",
    "What is DNA?",
    "Why do we sleep?",
    "How do magnets work?",
]
TEST_PROMPTS = [
    "What is gravity?",
    "How do plants drink water?",
    "What is a computer virus?",
    "Why is the ocean salty?",
    "How do I boil an egg?",
    "What are clouds made of?",
]


def brevity(prompt, response: str) -> float:
    """1 for an empty answer, 0 from 80 words on."""
    return max(0.0, 1.0 - len(response.split()) / 80)


def detail(prompt, response: str) -> float:
    """Distinct words, up to 50."""
    return min(1.0, len({w.strip(".,!?;:").lower() for w in response.split()}) / 50)


SCORERS = {"brevity": brevity, "detail": detail}
BRIEF = " Answer in one sentence."
MIN_GAP = 0.1  # score difference below which a pair is noise, not a preference


def make_pairs(prompts, answers, out_dir: Path) -> str:
    """Every pair of a prompt's answers that an objective tells apart -> OBJ=PATH spec."""
    files = {}
    for name, score in SCORERS.items():
        rows = []
        for prompt, cands in zip(prompts, answers):
            cands = list(dict.fromkeys(cands))  # a repeated sample would repeat its pairs
            s = [score(prompt, a) for a in cands]
            for i in range(len(cands)):
                for j in range(len(cands)):
                    if s[i] >= s[j] + MIN_GAP and cands[i].strip() and cands[j].strip() and cands[i] != cands[j]:
                        rows.append({"prompt": prompt, "chosen": cands[i], "rejected": cands[j]})
        path = out_dir / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files[name] = path
    return ",".join(f"{k}={v}" for k, v in files.items())


def run_llm_demo(
    out,
    *,
    model: str = DEFAULT_MODEL,
    samples: int = 4,
    steps: int = 30,
    new_tokens: int = 48,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> dict:
    out = Path(out)
    t0 = time.perf_counter()
    base, tokenizer = load_base(model)
    # 1. the base model's own answers (a prompt wrapper only to reach the shared decoding loop)
    sampler = HPTModel.wrap(base, 1, n_tokens=1, conditioned=False)
    answers = [[] for _ in TRAIN_PROMPTS]
    for k in range(samples):
        asked = [p + BRIEF for p in TRAIN_PROMPTS] if k % 2 else TRAIN_PROMPTS
        texts = generate(
            sampler,
            tokenizer,
            asked,
            [1.0],
            reference=True,
            max_new_tokens=new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=0.95,
            seed=seed + 1000 * k,
            batch_size=20,
        )
        for row, t in zip(answers, texts):
            row.append(t)
    spec = make_pairs(TRAIN_PROMPTS, answers, out / "data")
    t1 = time.perf_counter()
    log(f"sampled {samples} answers to {len(TRAIN_PROMPTS)} prompts in {t1 - t0:.0f} s")
    # 2. one conditioned policy for both objectives
    cfg = LLMConfig(
        model=model,
        max_steps=steps,
        batch_size=4,
        max_length=160,
        held_out=0.1,
        val_pairs=8,
        lr=lr,
        beta=0.1,
        alpha=0.3,
        seed=seed,
        val_every=10**6,
        progress=progress,
        # the setting of the figures in docs/results/llm-demo.md: both objectives judge the
        # same answers, so one shared LoRA and one w per step serve
        lora_mix=False,
        weight_sampling="step",
        prompt_mask="linear",
        prompt_lr=0.0,
    )
    policy, metrics = finetune_llm(spec, out / "policy", cfg, overwrite=True, base=(base, tokenizer), log=log)
    t2 = time.perf_counter()
    # 3. greedy answers on unseen prompts under three trade-offs, and the base's
    grid = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    front = generation_front(
        lambda w: generate(policy, tokenizer, TEST_PROMPTS, w, beta=cfg.beta, max_new_tokens=new_tokens * 2),
        TEST_PROMPTS,
        grid,
        SCORERS,
    )
    base_texts = generate(policy, tokenizer, TEST_PROMPTS, [0.5, 0.5], reference=True, max_new_tokens=new_tokens * 2)
    front["base_point"] = [
        float(np.mean([f(p, r) for p, r in zip(TEST_PROMPTS, base_texts)])) for f in SCORERS.values()
    ]
    front["base_samples"] = base_texts
    front["mean_words"] = [float(np.mean([len(r.split()) for r in s])) for s in front["samples"]]
    front["base_mean_words"] = float(np.mean([len(r.split()) for r in base_texts]))
    t3 = time.perf_counter()
    result = {
        "front": front,
        "prompts": TEST_PROMPTS,
        "train_metrics": metrics,
        "seconds": {
            "sampling": round(t1 - t0, 1),
            "training": round(t2 - t1, 1),
            "generation": round(t3 - t2, 1),
            "total": round(t3 - t0, 1),
        },
    }
    write_json(out / "demo.json", result)
    plot_fronts(
        {"Weight-COS-DPO, greedy answers": front},
        out / "front.png",
        title="Held-out prompts: mean answer scores at each w",
    )
    return result
