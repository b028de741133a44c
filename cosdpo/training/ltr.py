"""Ranking recipes: train the base ranker, fine-tune it with Weight-COS-DPO.

Each job has one config dataclass, validated when built, so a bad option
fails before any data is read. A recipe wires data, model, task and the
shared training loop, then writes a model folder (config.json +
model.safetensors), ``metrics.json`` and ``train_log.json`` to ``out``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import option
from ..data.groups import RankingSet
from ..data.letor import dataset_width
from ..data.objectives import Schema, check_grade_spec, make_schema
from ..evaluation.front import ndcg_report, ranker_front, score_base, score_conditioned
from ..losses import TRANSFORMS, lipo, listnet, weight_cos
from ..models.ranker import (
    PARAMETRISATIONS,
    BaseRanker,
    ConditionedRanker,
    ScorerConfig,
    count_trainable,
    load_ranker,
    save_ranker,
)
from ..simplex import check_simplex, draw_weights, weight_grid
from .checkpoint import TrainState, job_settings
from .loop import TrainConfig, finish_run, make_accelerator, prepare_out, start_run, train

TRAIN_METHODS = ("wcos", "tcos", "ls", "modpo")
WEIGHT_SAMPLING = ("step", "group")
SIMPLEX_STEPS_PER_OBJECTIVE = 150


def simplex_steps(k: int) -> int:
    """The least optimizer steps of a model conditioned on K objectives' w.

    Why a floor in steps: every step sees new draws of w, and the simplex
    needs enough of them whatever the data size. With 34 training queries an
    epoch is 2 steps, so epochs and early stopping alone ended runs after a
    few dozen draws, far from the front the same model reaches later
    (docs/ranking.md, "Budgets in steps").
    """
    return SIMPLEX_STEPS_PER_OBJECTIVE * k


def _scorer(cfg: ScorerConfig) -> ScorerConfig:
    """The network part of a job config (which also holds training options)."""
    return ScorerConfig(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ff_mult, cfg.dropout, cfg.attn_dropout)


def _grades(text: str) -> dict:
    from ..data.objectives import parse_grade_overrides

    return parse_grade_overrides(text)


@dataclass
class BaseConfig(TrainConfig, ScorerConfig):
    """Base ranker: ListNet on the relevance label.

    ``exclude`` names the objectives you will fine-tune on later; in a
    non-MSLR file their features must leave the input now (MSLR's 132..136
    are never inputs).
    """

    exclude: tuple[str, ...] = option(
        (),
        "Objectives you will fine-tune on (e.g. f44,f45): in a non-MSLR file their features leave the input.",
        panel="Data and output",
    )
    max_label: int = option(4, "Relevance labels must be integers 0..max-label.", panel="Data and output")
    split_seed: int = option(0, "Seed of the 60/20/20 query split of a single file.", panel="Data and output")
    k: int = option(10, "NDCG cut-off of validation.", panel="Evaluation")

    def __post_init__(self):
        TrainConfig.__post_init__(self)
        ScorerConfig.__post_init__(self)
        self.exclude = tuple(self.exclude)
        if self.max_label < 1 or self.k < 1:
            raise ValueError("max_label and k must be >= 1")


@dataclass
class FinetuneConfig(TrainConfig, ScorerConfig):
    """Weight-COS-DPO: one ranker conditioned on w for every trade-off (and its baselines' single models)."""

    objectives: tuple[str, ...] = option(
        (),
        "Comma-separated: MSLR names (quality1, quality2, query_url_clicks, "
        "url_clicks, dwell_time) or feature indices (f44).",
        panel="Data and output",
    )
    grades: dict = option(
        help="Grade transforms per objective, e.g. url_clicks=log2,quality1=linear:0:255.",
        panel="Data and output",
        parse=_grades,
        default_factory=dict,
    )
    method: str = option(
        "wcos",
        "wcos: Weight-COS-DPO; tcos: also conditioned on per-objective temperatures; "
        "ls: one unconditioned model for --weights (DPO-LS).",
        choices=TRAIN_METHODS,
        panel="Method",
    )
    fixed_weights: tuple[float, ...] | None = option(
        None, "Train one unconditioned model for this w (DPO-LS).", panel="Method", cli="--weights"
    )
    alpha: float = option(0.3, "Dirichlet concentration of the w draws (small: corners, wider front).", panel="Method")
    weight_sampling: str = option(
        "group",
        "group: each query group its own w (batch-size draws a step); step: one w per optimizer step (the paper).",
        choices=WEIGHT_SAMPLING,
        panel="Method",
    )
    min_steps: int | None = option(
        None,
        "Optimizer steps at least: --epochs grow to reach them and early stopping waits for them "
        f"(unset: wcos and tcos {SIMPLEX_STEPS_PER_OBJECTIVE} x K, a single-w model 0).",
    )
    penalty: float = option(0.0, "lambda, weight of the cosine penalty pulling the losses towards w.", panel="Method")
    beta: float = option(
        1.0, "Training temperature of DPO (serve another one with `ltr front --beta-prime`).", panel="Method"
    )
    beta_range: tuple[float, ...] = option(
        (0.1, 10.0), "tcos: each step draws beta_k log-uniform on LO,HI.", panel="Method"
    )
    param: str = option(
        "augment",
        "augment (base + a correction, starts at the base) or scratch (a new network).",
        choices=PARAMETRISATIONS,
        panel="Model",
    )
    transform: str = option(
        "softmax",
        "Label transform of the loss: softmax (dense grades) or l1 (sparse).",
        choices=TRANSFORMS,
        panel="Method",
    )
    modpo_min_w1: float = option(0.05, "modpo: floor on w_1 against the 1/w_1 blow-up.", cli=False)
    d_model: int = option(64, "Width of the conditioned network.", panel="Model")
    split_seed: int = option(0, "Seed of the 60/20/20 query split of a single file.", panel="Data and output")
    val_grid: int = option(5, "Grid weights of the validation front (K = 2).", panel="Evaluation")
    k: int = option(10, "NDCG cut-off.", panel="Evaluation")

    def __post_init__(self):
        TrainConfig.__post_init__(self)
        ScorerConfig.__post_init__(self)
        self.objectives = tuple(o.strip() for o in self.objectives)
        if not self.objectives or not all(self.objectives):
            raise ValueError("name at least one objective to fine-tune on (e.g. quality1,url_clicks)")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"an objective is named twice: {list(self.objectives)}")
        for spec in self.grades.values():
            check_grade_spec(spec)
        if not self.alpha > 0:
            raise ValueError(f"alpha (Dirichlet concentration) must be > 0, got {self.alpha}")
        if self.penalty < 0:
            raise ValueError(f"penalty (lambda) must be >= 0, got {self.penalty}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.fixed_weights is not None and self.method == "wcos":
            self.method = "ls"  # one w given: the one model for it
        if (self.fixed_weights is None) != (self.method in ("wcos", "tcos")):
            raise ValueError("--weights is needed by, and only by, methods ls and modpo")
        if self.fixed_weights is not None:
            self.fixed_weights = tuple(float(x) for x in check_simplex(self.fixed_weights, len(self.objectives)))
        if not 0 < self.modpo_min_w1 <= 1:
            raise ValueError(f"modpo_min_w1 must be in (0, 1], got {self.modpo_min_w1}")
        self.beta_range = tuple(float(b) for b in self.beta_range)
        if len(self.beta_range) != 2 or not 0 < self.beta_range[0] < self.beta_range[1]:
            raise ValueError(f"beta_range must be LO,HI with 0 < LO < HI, got {self.beta_range}")
        if self.val_grid < 2:
            raise ValueError("val_grid must be >= 2")
        if self.weight_sampling == "group" and self.penalty:
            raise ValueError("the cosine penalty compares one w with the step's losses: use --weight-sampling step")

    def resolved_min_steps(self) -> int:
        """``min_steps``, or the simplex rule for a conditioned model when unset."""
        if self.min_steps is not None:
            return self.min_steps
        return simplex_steps(len(self.objectives)) if self.method in ("wcos", "tcos") else 0


class ListNetTask:
    names = ["ListNet on the relevance label"]

    def __init__(self, vali: RankingSet, k: int, accelerator: Accelerator | None = None):
        self.vali, self.k, self.accelerator = vali, k, accelerator

    def terms(self, model, batch, step):
        per_group, valid = listnet(model(batch["x"], batch["mask"]), batch["main"], batch["mask"], reduction="none")
        return per_group.sum()[None], valid.sum()[None]

    def combine(self, losses, step):
        return losses[0]

    def validate(self, model) -> float:
        return ndcg_report(self.vali, score_base(model, self.vali, accelerator=self.accelerator), self.k)["main"]


class WeightCOSTask:
    """Draw w ~ Dir(alpha) per step; loss sum_k w_k LiPO_k - lambda cos(w, L).

    Temperature-COS (``method="tcos"``) also draws beta_k log-uniform per
    objective and step; the model sees beta and LiPO_k uses beta_k.
    """

    def __init__(self, cfg: FinetuneConfig, vali: RankingSet, accelerator: Accelerator | None = None):
        """``accelerator``: validation is split across its processes."""
        self.cfg, self.vali, self.accelerator = cfg, vali, accelerator
        self.names = list(cfg.objectives)
        self.K = len(cfg.objectives)
        self.vali_base = None
        self.val_grid = weight_grid(self.K, cfg.val_grid if self.K == 2 else self.K + 5, "dirichlet", cfg.seed)

    @property
    def w_per_group(self) -> bool:
        return self.cfg.weight_sampling == "group" and self.cfg.fixed_weights is None

    @property
    def draws_per_step(self) -> int:
        if self.cfg.fixed_weights is not None:
            return 0
        return self.cfg.batch_size if self.w_per_group else 1

    def weights(self, step: int) -> torch.Tensor:
        """The step's w (with a w per group: their expectation, 1/K each, for the log)."""
        if self.cfg.fixed_weights is not None:
            return torch.tensor(self.cfg.fixed_weights, dtype=torch.float32)
        if self.w_per_group:
            return torch.full((self.K,), 1.0 / self.K)
        return draw_weights(self.cfg.seed, step, self.cfg.alpha, self.K)

    def group_weights(self, step: int, groups) -> torch.Tensor:
        """(B, K): w ~ Dir(alpha) per query group, seeded by (seed, step, group), so processes,
        micro-batches and resumed runs draw the same. Why: for the cost of one step, B draws
        visit the simplex (its corners included) B times as often as one w a step does."""
        draws = [
            np.random.default_rng([self.cfg.seed, step, int(g)]).dirichlet(np.full(self.K, self.cfg.alpha))
            for g in groups
        ]
        return torch.tensor(np.array(draws), dtype=torch.float32)

    def temperatures(self, step: int) -> torch.Tensor | None:
        if self.cfg.method != "tcos":
            return None
        lo, hi = np.log(self.cfg.beta_range)
        return torch.tensor(
            np.exp(np.random.default_rng([self.cfg.seed, step, 1]).uniform(lo, hi, self.K)), dtype=torch.float32
        )

    def terms(self, model, batch, step):
        """Per-objective LiPO sums. With a w per group, group g's loss enters objective k's sum as
        K w_gk l_gk: the step's objective, sum_k (1/K) L_k with E[w] = 1/K logged as the step's w, is then
        the mean over groups of w_g . l_g, and each loss/k in the log keeps its unweighted scale."""
        if self.w_per_group:
            w = self.group_weights(step, batch["group"].tolist()).to(batch["x"].device)
        else:
            w = self.weights(step).to(batch["x"].device)
        betas = self.temperatures(step)
        s = model(batch["x"], batch["mask"], w, base_scores=batch["ref"], beta=betas)
        sums, counts = [], []
        for j in range(self.K):
            beta = self.cfg.beta if betas is None else float(betas[j])
            per_group, valid = lipo(
                s, batch["ref"], batch["aux"][..., j], batch["mask"], beta, self.cfg.transform, reduction="none"
            )
            sums.append(self.K * (per_group * w[:, j]).sum() if self.w_per_group else per_group.sum())
            counts.append(valid.sum())
        return torch.stack(sums), torch.stack(counts)

    def combine(self, losses, step):
        return weight_cos(losses, self.weights(step).to(losses.device), self.cfg.penalty)

    def validate(self, model) -> float:
        if self.vali_base is None:  # the frozen base scores the validation set once per run
            self.vali_base = score_base(model.base, self.vali, accelerator=self.accelerator)
        if self.cfg.fixed_weights is not None:  # one model for one w: its scalarised NDCG
            w = np.asarray(self.cfg.fixed_weights)
            front = ranker_front(
                model, self.vali, w[None], self.cfg.k, base=self.vali_base, accelerator=self.accelerator
            )
            return float(w @ front["points"][0])
        front = ranker_front(
            model, self.vali, self.val_grid, self.cfg.k, base=self.vali_base, accelerator=self.accelerator
        )
        return front["hypervolume"]


class MODPOTask(WeightCOSTask):
    """MO-DPO for one w: objective 1's labels on (beta/w_1)(s - s_base) - (1/w_1) sum_{j>1} w_j r_j.

    That score is LiPO at temperature beta/w_1 against the shifted reference
    s_base + m/beta (m = sum_{j>1} w_j r_j, precomputed per item), so the
    plain LiPO loss serves. w_1 is floored at ``modpo_min_w1``.
    """

    def terms(self, model, batch, step):
        w1 = max(self.cfg.fixed_weights[0], self.cfg.modpo_min_w1)
        s = model(batch["x"], batch["mask"], None, base_scores=batch["ref"])
        per_group, valid = lipo(
            s,
            batch["ref"] + batch["margin"] / self.cfg.beta,
            batch["aux"][..., 0],
            batch["mask"],
            self.cfg.beta / w1,
            self.cfg.transform,
            reduction="none",
        )
        return per_group.sum()[None], valid.sum()[None]

    def combine(self, losses, step):
        return losses[0]


def _metrics(model, state: TrainState, acc: Accelerator, extra: dict) -> dict:
    return {
        "train_seconds": round(state.seconds, 3),
        "epochs_run": state.epoch,
        "steps": state.global_step,
        "best_epoch": state.best_epoch,
        "best_val": state.best,
        "stopped_early": state.stopped_early,
        "trainable_params": count_trainable(model),
        "processes": acc.num_processes,
    } | extra


def train_base(
    data,
    out,
    cfg: BaseConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    accelerator: Accelerator | None = None,
):
    """Train the base ranker on ``data`` (Fold directory or single LETOR file)."""
    cfg = cfg or BaseConfig()
    out = Path(out)
    prepare_out(out, resume, overwrite, "config.json")
    acc = accelerator or make_accelerator(cfg.report_to, out)
    width = dataset_width(data)
    schema = make_schema(width, cfg.exclude, max_label=cfg.max_label).with_objectives([])
    train_set = RankingSet.load(data, "train", schema, cfg.split_seed).check_learnable(data, "main")
    vali = RankingSet.load(data, "vali", schema, cfg.split_seed)
    set_seed(cfg.seed)
    start_run(out, acc, "ltr train-base", {"data": str(data)}, cfg)
    model = BaseRanker(schema, _scorer(cfg))
    model.norm.fit(train_set.features)
    model.to(acc.device)
    state = train(
        model,
        ListNetTask(vali, cfg.k, acc),
        train_set,
        cfg,
        out,
        job=job_settings(cfg, data=str(data)),
        resume=resume,
        accelerator=acc,
        desc="base",
    )
    metrics = _metrics(model, state, acc, {"val_ndcg": state.best, "data": str(data)})
    return model, finish_run(out, acc, lambda: save_ranker(model, out, extra={"training": metrics}), metrics, state)


def finetune(
    data,
    base_dir,
    out,
    cfg: FinetuneConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    accelerator: Accelerator | None = None,
    single_models=None,
):
    """Weight-COS-DPO: fine-tune the base in ``base_dir`` on the chosen objectives.

    ``method="ls"`` trains one unconditioned model for ``fixed_weights``
    (DPO-LS, and the single-objective models of DPO Soup / MO-DPO);
    ``method="modpo"`` needs ``single_models``: the K single-objective
    models (or their folders), whose implicit rewards become margins.
    """
    out = Path(out)
    prepare_out(out, resume, overwrite, "config.json")
    acc = accelerator or make_accelerator(cfg.report_to, out)
    base = load_ranker(base_dir)
    if not isinstance(base, BaseRanker):
        raise ValueError(f"{base_dir} is not a base ranker (it is a {base.kind} model)")
    wanted = make_schema(base.schema.n_features, cfg.objectives, cfg.grades, base.schema.max_label)
    clash = [o.name for o in wanted.objectives if o.feature in set(base.schema.inputs)]
    if clash:
        raise ValueError(
            f"the base ranker in {base_dir} uses {clash} as input features; retrain it with "
            f"--exclude {','.join(cfg.objectives)} so that the objectives leave its input"
        )
    schema = Schema(base.schema.n_features, list(base.schema.inputs), wanted.objectives, base.schema.max_label)
    train_set = RankingSet.load(data, "train", schema, cfg.split_seed).check_learnable(data, "objectives")
    vali = RankingSet.load(data, "vali", schema, cfg.split_seed)
    base.to(acc.device)
    start_run(out, acc, "ltr finetune", {"data": str(data), "base": str(base_dir)}, cfg)
    train_set.ref = score_base(base, train_set, accelerator=acc)  # the base is frozen: its scores never change
    if cfg.method == "modpo":
        train_set.margin = modpo_margins(single_models, train_set, cfg)
    set_seed(cfg.seed)
    model_method = cfg.method if cfg.method in ("wcos", "tcos") else "fixed"
    model = ConditionedRanker(
        base, schema, _scorer(cfg), cfg.param, cfg.beta, cfg.alpha, model_method, cfg.beta_range
    ).to(acc.device)
    task = (MODPOTask if cfg.method == "modpo" else WeightCOSTask)(cfg, vali, acc)
    state = train(
        model,
        task,
        train_set,
        replace(cfg, min_steps=cfg.resolved_min_steps()),
        out,
        job=job_settings(cfg, data=str(data), base=str(Path(base_dir).resolve())),
        resume=resume,
        accelerator=acc,
        desc=cfg.method,
    )
    metrics = _metrics(
        model,
        state,
        acc,
        {
            "val_hypervolume": state.best,
            "w_draws": _w_draws(task, train_set, cfg, state),
            "data": str(data),
            "objectives": list(cfg.objectives),
        },
    )
    return model, finish_run(out, acc, lambda: save_ranker(model, out, extra={"training": metrics}), metrics, state)


def _w_draws(task: WeightCOSTask, data: RankingSet, cfg: FinetuneConfig, state: TrainState) -> int:
    """How many w the run drew: one a step, or one per query group of every step it made."""
    if not task.w_per_group:
        return state.global_step if task.draws_per_step else 0
    partial = data.epoch_batches(cfg.batch_size, cfg.seed, state.epoch)[: state.step_in_epoch]
    return state.epoch * len(data) + sum(len(b) for b in partial)


def modpo_margins(single_models, data: RankingSet, cfg: FinetuneConfig) -> np.ndarray:
    """m = sum_{j>1} w_j r_j per item, r_j = beta (s_j - s_base) of single-objective model j."""
    if single_models is None or len(single_models) != len(cfg.objectives):
        raise ValueError(f"modpo needs the {len(cfg.objectives)} single-objective models")
    margin = np.zeros(len(data.main), dtype=np.float32)
    for w_j, m in zip(cfg.fixed_weights[1:], single_models[1:]):
        m = load_ranker(m) if isinstance(m, (str, Path)) else m
        if w_j:
            margin += w_j * cfg.beta * (score_conditioned(m, data, [cfg.fixed_weights], data.ref)[0] - data.ref)
    return margin
