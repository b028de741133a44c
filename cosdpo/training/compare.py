"""The baselines of docs/method.md section 7, and the side-by-side comparison.

Every method trains through ``finetune`` (same data, network, loss, loop
and budget per model); only what a model is conditioned on, and how many
models a front needs, differ:

- ``wcos``: one model conditioned on w (Weight-COS-DPO);
- ``ls`` (DPO-LS): one unconditioned model per grid weight, on sum_k w_k L_k;
- ``soup`` (DPO Soup): K single-objective models, parameters mixed by w;
- ``modpo`` (MO-DPO): the K single-objective models' implicit rewards become
  margins, then one model per grid weight on objective 1's labels.

``train_seconds`` is the wall time of all training a method's front needs;
when soup and modpo both run, the single-objective models they share are
trained once and counted in both.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..config import RUN_FILE, check_choices, check_finite, comparison_values, option, write_run_config
from ..data.groups import RankingSet
from ..data.letor import load_split
from ..evaluation.front import front_from_scores, score_base, score_conditioned
from ..evaluation.plot import new_figure, plot_fronts, save_figure
from ..models.ranker import count_trainable
from ..simplex import GRID_KINDS, weight_grid
from .ltr import FinetuneConfig, finetune

BUDGET_RATIO = 0.3  # the paper's time ratio; docs/results/ranking.md measures it on real MSLR rows
METHOD_NAMES = {"wcos": "Weight-COS-DPO", "ls": "DPO-LS", "soup": "DPO Soup", "modpo": "MO-DPO"}


def check_methods(methods, known, train_method: str) -> tuple[str, ...]:
    """The stripped method names, refused before any training when one is unknown
    or the shared training settings are not Weight-COS-DPO's (ranking and LLM comparisons)."""
    methods = tuple(m.strip() for m in methods)
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"unknown methods {bad}; choose from {', '.join(known)}")
    if train_method != "wcos":
        raise ValueError("the comparison trains Weight-COS-DPO itself: leave method at wcos")
    return methods


@dataclass
class CompareConfig:
    train: FinetuneConfig  # the settings every model is trained with (objectives included)
    methods: tuple[str, ...] = option(
        tuple(METHOD_NAMES),
        "Any of wcos (Weight-COS-DPO), ls (DPO-LS), soup (DPO Soup), modpo (MO-DPO).",
        panel="Method",
    )
    grid: int | None = option(
        None, "Grid size: K = 2, N evenly spaced weights (11); K > 2, at most N (50).", panel="Evaluation"
    )
    grid_kind: str = option("lattice", "K > 2: lattice or dirichlet.", choices=GRID_KINDS, panel="Evaluation")
    budget_ratio: float = option(
        BUDGET_RATIO,
        "Weight-COS-DPO's optimizer steps as this fraction of DPO-LS's front's, trained to the end "
        "(0: the paper's other rule, the same budget as each baseline model).",
        panel="Method",
    )
    overwrite: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choices(self)
        check_finite(self)
        self.methods = check_methods(self.methods, METHOD_NAMES, self.train.method)
        if self.budget_ratio < 0:
            raise ValueError(f"budget_ratio must be >= 0, got {self.budget_ratio}")
        weight_grid(len(self.train.objectives), self.grid, self.grid_kind, self.train.seed)  # fails early

    @property
    def by_ratio(self) -> bool:
        return sized_by_ratio(self.budget_ratio, self.methods)

    def budget_rule(self) -> str:
        return budget_rule(self.budget_ratio, self.methods)


def sized_by_ratio(ratio: float, methods) -> bool:
    """Weight-COS-DPO sized by the baselines' steps: there are baselines, and a ratio (ranking and LLM)."""
    return bool(ratio) and "wcos" in methods and len(methods) > 1


def budget_rule(ratio: float, methods) -> str:
    if sized_by_ratio(ratio, methods):
        return (
            f"each baseline model gets the training budget; Weight-COS-DPO gets {ratio:g} of the total optimizer "
            "steps of DPO-LS's front (without DPO-LS, of the largest baseline front), with no early stop"
        )
    return "every model (each baseline model, and the one conditioned model) gets the same training budget"


def reference_steps(fronts: dict) -> int:
    """The baseline front Weight-COS-DPO's budget is a fraction of: DPO-LS's (the paper's reference), else the
    costliest one trained."""
    if "ls" in fronts:
        return fronts["ls"]["train_steps"]
    return max(f["train_steps"] for f in fronts.values())


def soup(models, w):
    """theta(w) = sum_k w_k theta_k over the trainable network (the frozen base is shared)."""
    mixed = copy.deepcopy(models[0])
    states = [m.net.state_dict() for m in models]
    mixed.net.load_state_dict({k: sum(float(wk) * st[k] for wk, st in zip(w, states)) for k in states[0]})
    return mixed.eval()


def compare(data, base_dir, out, cfg: CompareConfig) -> dict:
    out = Path(out)
    if (out / "compare.json").exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a comparison; pass --overwrite or choose another --out")
    write_run_config(out / RUN_FILE, "ltr compare", {"data": str(data), "base": str(base_dir)} | comparison_values(cfg))
    K = len(cfg.train.objectives)
    grid = weight_grid(K, cfg.grid, cfg.grid_kind, cfg.train.seed)
    # one-time costs before any clock starts, so that no method pays for them:
    # parsing (and caching) the data, and torch's lazy import on the first optimizer
    load_split(data, "all")
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])

    singles: list = []  # (model, seconds) of the K single-objective models

    steps: dict = {}  # model name -> optimizer steps

    def run(name, **changes):
        t0 = time.perf_counter()
        model, metrics = finetune(
            data,
            base_dir,
            out / name,
            replace(cfg.train, **changes),
            overwrite=True,
            single_models=[m for m, _ in singles] or None,
        )
        steps[name] = metrics["steps"]
        return model, time.perf_counter() - t0

    def fixed(name, w, **more):
        return run(name, method=more.pop("method", "ls"), fixed_weights=tuple(float(x) for x in w), penalty=0.0, **more)

    if {"soup", "modpo"} & set(cfg.methods):
        for j in range(K):
            singles.append(fixed(f"single/{cfg.train.objectives[j]}", np.eye(K)[j]))

    test = None
    fronts = {}
    # with a budget ratio, the baselines train first: their total steps size Weight-COS-DPO's budget
    order = sorted(cfg.methods, key=lambda m: m == "wcos") if cfg.by_ratio else cfg.methods
    for method in order:
        before = set(steps)
        if method == "wcos":
            budget = {"min_steps": 0 if cfg.train.min_steps is None else cfg.train.min_steps}  # the same budget
            if cfg.by_ratio:
                budget = {"max_steps": max(1, round(cfg.budget_ratio * reference_steps(fronts))), "patience": 0}
            model, seconds = run("wcos", **budget)
            models, n_params, n_models = [model], count_trainable(model), 1
        elif method == "ls":
            trained = [fixed(f"ls/{i:02d}", w) for i, w in enumerate(grid)]
            models, seconds = [m for m, _ in trained], sum(t for _, t in trained)
            n_params, n_models = sum(count_trainable(m) for m in models), len(models)
        elif method == "soup":
            models = [soup([m for m, _ in singles], w) for w in grid]
            seconds, n_params = sum(t for _, t in singles), sum(count_trainable(m) for m, _ in singles)
            n_models = len(singles)
        else:
            trained = [fixed(f"modpo/{i:02d}", w, method="modpo") for i, w in enumerate(grid)]
            models = [m for m, _ in trained]
            seconds = sum(t for _, t in trained) + sum(t for _, t in singles)
            n_params = sum(count_trainable(m) for m in models) + sum(count_trainable(m) for m, _ in singles)
            n_models = len(models) + len(singles)
        if test is None:
            test = RankingSet.load(data, "test", models[0].schema, cfg.train.split_seed)
            base = score_base(models[0].base, test)
        if len(models) == 1:
            scores = score_conditioned(models[0], test, grid, base)
        else:
            scores = np.stack([score_conditioned(m, test, [w], base)[0] for m, w in zip(models, grid)])
        shared = [f"single/{o}" for o in cfg.train.objectives] if method in ("soup", "modpo") else []
        fronts[method] = front_from_scores(test, grid, scores, base, cfg.train.objectives, cfg.train.k) | {
            "train_steps": int(sum(steps[n] for n in (set(steps) - before) | set(shared) if n in steps)),
            "train_seconds": round(seconds, 3),
            "trainable_params": int(n_params),
            "models_trained": n_models,
        }
    result = {
        "objectives": list(cfg.train.objectives),
        "weights": grid.tolist(),
        "budget_rule": cfg.budget_rule(),
        "methods": {m: fronts[m] for m in cfg.methods},
        "settings": asdict(cfg.train)
        | {"methods": list(cfg.methods), "grid": len(grid), "budget_ratio": cfg.budget_ratio}
        | cfg.extra,
    }
    write_json(out / "compare.json", result)
    picture(result, out / "compare.png")
    return result


ROWS = (
    ("hypervolume", "{:.4g}"),
    ("main NDCG@10", "{:.4f} +- {:.4f}"),
    ("train steps", "{:,}"),
    ("train seconds", "{:.1f}"),
    ("trainable params", "{:,}"),
    ("models trained", "{}"),
)


def _cell(front: dict, name: str):
    if name == "main NDCG@10":
        return None if "main_ndcg" not in front else (front["main_ndcg"]["mean"], front["main_ndcg"]["std"])
    if name == "train steps" and "train_steps" not in front:
        return None
    key = {
        "hypervolume": "hypervolume",
        "train steps": "train_steps",
        "train seconds": "train_seconds",
        "trainable params": "trainable_params",
        "models trained": "models_trained",
    }[name]
    return (front[key],)


def table_rows(result: dict) -> list[list[str]]:
    """The paper's table shape: one row per metric, one column per method (LLM results have no main NDCG)."""
    rows = []
    for name, fmt in ROWS:
        cells = [_cell(f, name) for f in result["methods"].values()]
        if all(c is not None for c in cells):
            rows.append([name, *(fmt.format(*c) for c in cells)])
    return rows


def format_table(result: dict) -> str:
    header = ["", *(METHOD_NAMES[m] for m in result["methods"])]
    rows = [header, *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


def picture(result: dict, path: Path):
    if len(result["objectives"]) == 2:
        plot_fronts(
            {METHOD_NAMES[m]: f for m, f in result["methods"].items()},
            path,
            title="Fronts on the test split, same grid and budget per model",
        )
        return
    fig, axes = new_figure(figsize=(2.2 + 2.2 * len(result["methods"]), 2.2))
    ax = axes[0, 0]
    ax.axis("off")
    ax.table(cellText=table_rows(result), colLabels=["", *(METHOD_NAMES[m] for m in result["methods"])], loc="center")
    ax.set_title(f"K = {len(result['objectives'])}: {', '.join(result['objectives'])}")
    save_figure(fig, path)
