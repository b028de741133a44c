"""Generation fronts: what the policy writes at each w, scored per objective (``cosdpo llm score``).

A preference-accuracy front says how the policy ranks given answers; users
judge what it writes. Here the policy answers held-out prompts at every grid
weight (greedy, at the serving temperature beta'), and each objective's
scorer rates every answer: a Hugging Face sequence-classification reward
model (its first logit, the convention of reward models trained with TRL),
or a Python function ``f(prompt, response) -> float`` named as
``module:function``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_file, write_json
from ..data.preferences import load_many, split_pairs
from ..simplex import weight_grid
from .metrics import hypervolume
from .plot import plot_fronts


def _text(prompt) -> str:
    """The last user turn of a prompt (messages), as a scorer sees it."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


class RewardModel:
    """``score(prompts, responses)``: a sequence-classification model's first logit, batched."""

    def __init__(self, folder, batch_size: int = 8, max_length: int = 1024):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder, self.spec = Path(folder), str(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no reward model folder (a Hugging Face folder with config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(folder), use_safetensors=True).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length

    def text(self, prompt, response: str) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = [*messages, {"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(m["content"] for m in messages)

    @torch.no_grad()
    def score(self, prompts, responses) -> list[float]:
        out = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [
                self.text(p, r) for p, r in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            ]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            out += self.model(**enc).logits[:, 0].float().tolist()
        return out


class FunctionScorer:
    """``score(prompts, responses)`` from ``f(prompt_text, response) -> float``."""

    def __init__(self, spec: str):
        self.spec = spec
        module, _, name = spec.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"scorer {spec!r}: cannot import it ({exc})") from None
        if not callable(self.fn):
            raise ValueError(f"scorer {spec!r} is not a function")

    def score(self, prompts, responses) -> list[float]:
        return [float(self.fn(_text(p), r)) for p, r in zip(prompts, responses)]


def load_reward(spec: str):
    """A reward-model folder, or ``module:function``."""
    if ":" in spec and not Path(spec).exists():
        return FunctionScorer(spec)
    return RewardModel(spec)


def parse_rewards(text: str, objectives) -> dict[str, str]:
    """``helpful=DIR,harmless=mod:fn`` -> {objective: spec}, one per objective of the policy."""
    specs = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, eq, spec = part.partition("=")
        if not eq or not spec:
            raise ValueError(f"--reward takes OBJECTIVE=DIR or OBJECTIVE=module:function, got {part!r}")
        if name in specs:
            raise ValueError(f"--reward names {name!r} twice")
        specs[name] = spec
    if sorted(specs) != sorted(objectives):
        raise ValueError(f"--reward must name each of the policy's objectives {list(objectives)}, got {list(specs)}")
    return {o: specs[o] for o in objectives}


def held_out_prompts(data: str, info: dict, fmt: str | None = None, max_prompts: int | None = None, split="held-out"):
    """The distinct prompts training kept out (same data, fraction and seed as in policy.json), in order."""
    pairs, _, _ = load_many(data, fmt, info["config"].get("pku_filter", "none"))
    if split == "held-out":
        cfg = info["config"]
        _, pairs = split_pairs(pairs, cfg["held_out"], cfg["split_seed"])
    prompts = list({json.dumps(p.prompt, sort_keys=True): p.prompt for p in pairs}.values())
    prompts = [list(p) for p in prompts]
    return prompts[:max_prompts] if max_prompts else prompts


def generation_scores(generate_at, prompts, grid, scorers: dict, progress: bool = False):
    """(responses per w, scores per w (objective -> list), base responses, base scores)."""
    rows, rows_scores = [], []
    for w in tqdm([*grid, None], desc="generating", unit="w", disable=not progress):
        responses = generate_at(w)
        rows.append(responses)
        rows_scores.append({o: s.score(prompts, responses) for o, s in scorers.items()})
    return rows[:-1], rows_scores[:-1], rows[-1], rows_scores[-1]


def write_generation_front(
    policy,
    tokenizer,
    info: dict,
    prompts,
    scorers: dict,
    out,
    *,
    grid=None,
    beta_prime=None,
    max_new_tokens=128,
    batch_size: int = 8,
    progress: bool = True,
    model_name: str = "",
) -> dict:
    """front.json (mean score per objective at each w, hypervolume), front.png, generations.jsonl."""
    from ..generation import generate

    objectives = list(info["objectives"])
    weights = weight_grid(len(objectives), grid, "lattice", info["config"]["seed"])

    def generate_at(w):
        return generate(
            policy,
            tokenizer,
            prompts,
            [1.0 / len(objectives)] * len(objectives) if w is None else w,
            beta=info["beta"],
            beta_prime=beta_prime,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            reference=w is None,  # the base model's answers: the front's point of departure
        )

    responses, scores, base_responses, base_scores = generation_scores(generate_at, prompts, weights, scorers, progress)
    points = np.array([[np.mean(s[o]) for o in objectives] for s in scores])
    base_point = np.array([np.mean(base_scores[o]) for o in objectives])
    # reward models' scores have no natural zero: the reference point is the worst mean seen, base included
    reference = np.minimum(points.min(axis=0), base_point)
    front = {
        "objectives": objectives,
        "metric": "mean score of greedy answers",
        "model": model_name,
        "weights": weights.tolist(),
        "points": points.tolist(),
        "base_point": base_point.tolist(),
        "reference_point": reference.tolist(),
        "hypervolume": hypervolume(points, reference),
        "base_hypervolume": hypervolume(base_point[None], reference),
        "beta_prime": beta_prime,
        "prompts": len(prompts),
        "scorers": {o: s.spec for o, s in scorers.items()},
        "mean_words": [float(np.mean([len(r.split()) for r in rs])) for rs in responses],
        "base_mean_words": float(np.mean([len(r.split()) for r in base_responses])),
    }
    out = Path(out)
    write_json(out / "front.json", front)
    with atomic_file(out / "generations.jsonl", "w") as f:
        for w, rs, ss in [*zip(weights.tolist(), responses, scores), (None, base_responses, base_scores)]:
            for i, (p, r) in enumerate(zip(prompts, rs)):
                row = {"weights": w, "model": "base" if w is None else "policy", "prompt": p, "response": r}
                f.write(json.dumps(row | {"scores": {o: ss[o][i] for o in objectives}}) + "\n")
    plot_fronts(
        {"Weight-COS-DPO, greedy answers": front | {"base_point": base_point.tolist()}},
        out / "front.png",
        title=f"Mean answer scores at each w ({len(prompts)} held-out prompts)",
    )
    return front
