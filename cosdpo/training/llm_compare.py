"""LLM baselines (docs/method.md section 7) beside Weight-COS-DPO, on one held-out set.

- ``wcos``: one policy, LoRA + Hyper Prompt Tuning conditioned on w;
- ``ls`` (DPO-LS): one policy per grid weight, LoRA + a plain prompt, on
  sum_k w_k DPO_k;
- ``soup`` (DPO Soup): K single-objective policies (LoRA + plain prompt);
  for w, the LoRA weight updates are mixed as sum_k w_k B_k A_k (PEFT's
  ``add_weighted_adapter`` with ``combination_type="cat"``, which is exactly
  that sum, not a mix of A and B separately) and the prompts as sum_k w_k P_k;
- ``modpo`` (MO-DPO): one policy per grid weight, trained on the first
  objective's pairs with the other objectives' single-objective policies'
  implicit rewards as margins.

Every model trains through ``finetune_llm`` with the same settings and, by
default, the same step budget (``budget_ratio`` sizes Weight-COS-DPO's from
DPO-LS's instead, as ``ltr compare`` does); ``train_seconds`` sums the wall
time of all training a front needs (the single-objective policies that Soup
and MO-DPO share are trained once, and counted in each method's time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..config import RUN_FILE, comparison_values, option, write_run_config
from ..evaluation.preference import preference_front, sequence_scores
from ..models.hpt import HPTModel
from ..models.llm import load_base, peft_wrapping
from ..simplex import weight_grid
from .compare import METHOD_NAMES, budget_rule, check_methods, picture, reference_steps, sized_by_ratio
from .llm import LLMConfig, finetune_llm, load_split, reference_logprobs

LLM_COMPARE_METHODS = ("wcos", "ls", "soup", "modpo")


@dataclass
class LLMCompareConfig:
    train: LLMConfig  # every model's settings; method must stay wcos
    methods: tuple[str, ...] = option(
        LLM_COMPARE_METHODS,
        "Any of wcos (Weight-COS-DPO), ls (DPO-LS), soup (DPO Soup), modpo (MO-DPO).",
        panel="Method",
    )
    grid: int | None = option(
        5, "Evaluation grid (K = 2: N evenly spaced weights); DPO-LS trains one policy per weight.", panel="Evaluation"
    )
    budget_ratio: float = option(
        0.0,
        "Weight-COS-DPO's optimizer steps as this fraction of DPO-LS's front's, trained to the end "
        "(e.g. 0.3, the paper's time ratio; 0: the same budget as each baseline model).",
        panel="Method",
    )
    overwrite: bool = False

    def __post_init__(self):
        self.methods = check_methods(self.methods, LLM_COMPARE_METHODS, self.train.method)
        if {"soup", "modpo"} & set(self.methods) and not self.train.lora_rank:
            raise ValueError("DPO Soup and MO-DPO load single-objective LoRAs: they need --lora-rank >= 1")
        if self.grid is not None and self.grid < 2:
            raise ValueError("grid must be >= 2")
        if not self.budget_ratio >= 0:
            raise ValueError(f"budget_ratio must be >= 0, got {self.budget_ratio}")


def soup_policy(single_dirs, w, base):
    """One policy whose LoRA update is sum_k w_k B_k A_k and whose prompt is sum_k w_k P_k."""
    from peft import PeftModel

    names = [f"single{k}" for k in range(len(single_dirs))]
    with peft_wrapping():
        model = PeftModel.from_pretrained(base, str(single_dirs[0]), adapter_name=names[0])
    for name, d in zip(names[1:], single_dirs[1:]):
        model.load_adapter(str(d), adapter_name=name)
    model.add_weighted_adapter(names, [float(x) for x in w], "soup", combination_type="cat")
    model.set_adapter("soup")
    parts = [HPTModel.from_pretrained(model, d) for d in single_dirs]
    mixed = parts[0]
    with torch.no_grad():
        mixed.hpt.prefix.copy_(sum(float(wk) * p.hpt.prefix for wk, p in zip(w, parts)))
    return mixed.eval()


def _unload(policy):
    """Give the base back without adapters, for the next method to wrap."""
    return policy.model.unload() if hasattr(policy.model, "unload") else policy.model


def compare_llm(data: str, out, cfg: LLMCompareConfig, *, fmt: str | None = None, log=print) -> dict:
    out = Path(out)
    if (out / "compare.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out}/compare.json exists: pass --overwrite or choose another --out")
    write_run_config(out / RUN_FILE, "llm compare", {"data": data, "format": fmt} | comparison_values(cfg))
    base, tokenizer = load_base(cfg.train.model, prompt_template=cfg.train.prompt_template)
    test, objectives, _ = load_split(data, tokenizer, cfg.train, fmt, "held-out")
    K = len(objectives)
    grid = weight_grid(K, cfg.grid, "lattice", cfg.train.seed)
    fronts = {}

    def run(name, train_cfg, **kwargs):
        """Train one model, scored at w on the test pairs; its seconds are the loop's training time (the
        shared reference cache, made by the first run, is preprocessing and counted for no method)."""
        policy, metrics = finetune_llm(
            data,
            out / "models" / name,
            train_cfg,
            fmt=fmt,
            overwrite=cfg.overwrite,
            base=(base, tokenizer),
            reference_file=out / "reference_logprobs.safetensors",
            log=log,
            **kwargs,
        )
        if test.ref is None:
            reference_logprobs(policy, {"test": test}, cfg.train, None, cfg.train.progress)
        return policy, metrics

    def fixed(method, w):
        return replace(cfg.train, method=method, fixed_weights=tuple(float(x) for x in w), lora_mix=False)

    singles = {}

    def single(k):
        """Objective k's own policy (Soup and MO-DPO share it): (folder, seconds, trainable parameters)."""
        if k not in singles:
            policy, m = run(f"single-{k}", fixed("ls", np.eye(K)[k]))
            _unload(policy)
            singles[k] = (out / "models" / f"single-{k}", m["train_seconds"], m["trainable_params"], m["steps"])
        return singles[k]

    by_ratio = sized_by_ratio(cfg.budget_ratio, cfg.methods)
    # with a budget ratio, the baselines train first: their steps size Weight-COS-DPO's budget
    for method in sorted(cfg.methods, key=lambda m: m == "wcos") if by_ratio else cfg.methods:
        log(f"== {METHOD_NAMES[method]}")
        if method == "wcos":
            budget = {}
            if by_ratio:
                budget = {"max_steps": max(1, round(cfg.budget_ratio * reference_steps(fronts))), "patience": 0}
            policy, m = run("wcos", replace(cfg.train, **budget))
            scores = [sequence_scores(policy, test, torch.tensor(w, dtype=torch.float32)) for w in grid]
            seconds, n_params, n_models, n_steps = m["train_seconds"], m["trainable_params"], 1, m["steps"]
            _unload(policy)
        elif method == "soup":
            parts = [single(k) for k in range(K)]
            seconds, n_params, n_models = sum(p[1] for p in parts), sum(p[2] for p in parts), K
            n_steps = sum(p[3] for p in parts)
            scores = []
            for w in grid:
                mixed = soup_policy([p[0] for p in parts], w, base).set_compute(
                    cfg.train.precision, cfg.train.attention
                )
                scores.append(sequence_scores(mixed, test, torch.tensor(w, dtype=torch.float32)))
                mixed.model.unload()
        else:  # ls, modpo: one policy per grid weight
            parts = [single(k) for k in range(1, K)] if method == "modpo" else []
            seconds, n_params, n_models = sum(p[1] for p in parts), sum(p[2] for p in parts), len(grid) + len(parts)
            n_steps = sum(p[3] for p in parts)
            extra = {"single_models": [p[0] for p in parts]} if method == "modpo" else {}
            scores = []
            for i, w in enumerate(grid):
                policy, m = run(f"{method}-{i}", fixed(method, w), **extra)
                seconds, n_params = seconds + m["train_seconds"], n_params + m["trainable_params"]
                n_steps += m["steps"]
                scores.append(sequence_scores(policy, test, torch.tensor(w, dtype=torch.float32)))
                _unload(policy)
        table = {tuple(w): s for w, s in zip(map(tuple, grid), scores)}
        fronts[method] = preference_front(test, grid, lambda w, t=table: t[tuple(w)], cfg.train.beta) | {
            "train_steps": int(n_steps),
            "train_seconds": round(seconds, 3),
            "trainable_params": int(n_params),
            "models_trained": n_models,
        }
    result = {
        "objectives": objectives,
        "weights": grid.tolist(),
        "budget_rule": budget_rule(cfg.budget_ratio, cfg.methods),
        "methods": {m: fronts[m] for m in cfg.methods},
        "settings": {
            "methods": list(cfg.methods),
            "grid": len(grid),
            "budget_ratio": cfg.budget_ratio,
            "data": data,
            "train": {k: v for k, v in vars(cfg.train).items()},
        },
    }
    write_json(out / "compare.json", result)
    picture(result, out / "compare.png")
    return result
