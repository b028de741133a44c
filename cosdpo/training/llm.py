"""LLM recipe: Weight-COS-DPO with Hyper Prompt Tuning and LoRA (docs/method.md sections 3 and 6).

The base model is frozen; LoRA adapters on the attention projections and the
prompt module train. ``method="wcos"`` conditions the prompt on w (HPT) and
draws w ~ Dir(alpha) per step; ``method="ls"`` trains one model for one w
with a plain prompt (DPO-LS, and the single-objective models of DPO Soup),
so the baselines get prompt tuning too.

Each objective's loss is DPO on response-token log-probs of the pairs judged
on it; the step objective is sum_k w_k L_k - lambda cos(w, L), run by the
same Accelerate loop as ranking. The reference (adapters off, no prefix) does
not depend on w or on training, so its log-probs are computed once per
dataset and kept in ``reference_logprobs.safetensors`` in the output folder
(``cache_reference``, on by default); a resumed run reads them back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..atomic import write_json
from ..config import from_dict, option, redefault, to_dict
from ..data.preferences import PKU_FILTERS, load_many, split_pairs
from ..data.tokenize import PROMPT_TEMPLATE_CHOICES, PreferenceSet, use_prompt_template
from ..evaluation.plot import plot_fronts
from ..evaluation.preference import preference_front, sequence_scores
from ..models.hpt import ATTENTIONS, MASKS, PRECISION_CHOICES, HPTModel
from ..models.llm import (
    DEFAULT_MODEL,
    POLICY_FILE,
    POLICY_FORMAT,
    add_lora,
    load_base,
    load_policy,
    read_policy_info,
    save_policy,
    write_model_card,
)
from ..models.ranker import count_trainable
from ..simplex import check_simplex, weight_grid
from .checkpoint import job_settings
from .loop import TrainConfig, finish_run, make_accelerator, prepare_out, start_run, train
from .preference_task import MODPOTask, PreferenceTask, modpo_margins
from .reference import REFERENCE_FILE, StepReference, reference_batches, reference_logprobs

LLM_METHODS = ("wcos", "ls", "modpo")
WEIGHT_SAMPLING = ("step", "pair")


@dataclass
class LLMConfig(TrainConfig):
    """One LLM fine-tuning job. Sizes default to what fits a laptop CPU; the method's defaults are the
    setting whose front followed w on HH-RLHF (docs/llm.md, "Defaults and the paper")."""

    model: str = option(
        DEFAULT_MODEL,
        "Hugging Face folder or hub id; smollm2 = the packaged "
        "SmolLM2-135M-Instruct, converted once into $COSDPO_CACHE.",
        panel="Model",
    )
    objectives: tuple[str, ...] = option(
        (), "Comma-separated subset of the data's objectives (default: all).", panel="Data and output"
    )
    method: str = option(
        "wcos",
        "wcos: one policy conditioned on w (Weight-COS-DPO); ls: one policy for --weights (DPO-LS); "
        "modpo: one policy for --weights from the first objective's pairs and the others' models (MO-DPO).",
        choices=LLM_METHODS,
        panel="Method",
    )
    fixed_weights: tuple[float, ...] | None = option(
        None, "Train one unconditioned policy for this w (DPO-LS).", panel="Method", cli="--weights"
    )
    modpo_min_w1: float = option(0.05, "modpo: floor on w_1 against the 1/w_1 blow-up.", cli=False)
    beta: float = option(0.1, "Training temperature of DPO (serve another one with --beta-prime).", panel="Method")
    alpha: float = option(0.3, "Dirichlet concentration of the w draws (small: corners, wider front).", panel="Method")
    weight_sampling: str = option(
        "pair",
        "pair: each pair its own w from Dir(alpha + e_k) of its objective k; step: one w per step (the paper).",
        choices=WEIGHT_SAMPLING,
        panel="Method",
    )
    penalty: float = option(0.0, "lambda, weight of the cosine penalty (needs --weight-sampling step).", panel="Method")
    lora_rank: int = option(8, "LoRA rank per objective block (0: no LoRA, the prompt alone trains).", panel="Model")
    lora_mix: bool = option(
        True,
        "Condition the LoRA on w too, as sum_k w_k B_k A_k (--no-lora-mix: one shared LoRA, the paper).",
        panel="Model",
    )
    lora_alpha: float = option(16.0, "LoRA scaling alpha (per rank block).", panel="Model")
    lora_targets: tuple[str, ...] = option(
        (),
        "Module names LoRA adapts (default: the architecture's attention "
        "projections, e.g. q/k/v/o_proj, GPT-2's c_attn).",
        panel="Model",
    )
    prompt_template: str = option(
        "chat",
        "How prompts become text: chat (the tokenizer's template), pku "
        "(BEGINNING OF CONVERSATION: USER: ... ASSISTANT:) or plain.",
        choices=PROMPT_TEMPLATE_CHOICES,
        panel="Model",
    )
    prompt_tokens: int = option(8, "Virtual tokens of the Hyper Prompt.", panel="Model")
    prompt_rank: int = option(4, "Rank r of the Hyper Prompt's mask M = A B.", panel="Model")
    prompt_hidden: int = option(64, "Hidden width of the MLPs that map w to A and B.", panel="Model")
    prompt_mask: str = option(
        "tanh", "tanh: the mask kept within (0, 2); linear: M = A B (the paper).", choices=MASKS, panel="Model"
    )
    prompt_lr: float = option(
        5e-3, "Learning rate of the Hyper Prompt (0: --lr); prompt tuning wants a larger one than LoRA."
    )
    pku_filter: str = option(
        "none",
        "PKU-SafeRLHF: none (both pairs of every row, the paper) or safety-contrast (a harmless pair only "
        "where one answer is flagged safe and the other unsafe).",
        choices=PKU_FILTERS,
        panel="Data and output",
    )
    max_length: int = option(512, "Tokens per prompt + response.", panel="Data and output")
    truncate_prompt: bool = option(
        True,
        "Fit a longer pair by dropping its dialogue's earliest turns (else the pair is counted and left out).",
        panel="Data and output",
    )
    max_pairs: int = option(0, "Training pairs per objective (0: all).", panel="Data and output")
    held_out: float = option(0.1, "Fraction of prompts kept out of training for evaluation.", panel="Data and output")
    split_seed: int = option(0, "Seed of the held-out split of the prompts.", panel="Data and output")
    val_pairs: int = option(32, "Held-out pairs per objective used for validation during training.", panel="Evaluation")
    val_grid: int = option(3, "Grid weights of the validation front.", panel="Evaluation")
    cache_reference: bool = option(
        True, "Compute the reference log-probs once per dataset (else every step).", panel="Runtime"
    )
    max_tokens: int = option(4096, "Padded tokens per forward when scoring without gradients.", panel="Runtime")
    precision: str = option(
        "fp32",
        "fp32; bf16: forwards under bf16 autocast, weights kept in float32 (about half the step time on a "
        "GPU or an AMX CPU); auto: bf16 where the device computes it natively.",
        choices=PRECISION_CHOICES,
        panel="Runtime",
    )
    attention: str = option(
        "auto",
        "The base's attention kernel: auto (the model's), sdpa or eager (faster with bf16 on CPU).",
        choices=ATTENTIONS,
        panel="Runtime",
    )
    epochs: int = redefault(TrainConfig, "epochs", 1)
    batch_size: int = redefault(TrainConfig, "batch_size", 8)
    lr: float = redefault(TrainConfig, "lr", 5e-4)
    patience: int = redefault(TrainConfig, "patience", 0)

    def __post_init__(self):
        TrainConfig.__post_init__(self)
        self.objectives = tuple(self.objectives)
        self.lora_targets = tuple(self.lora_targets)
        if self.fixed_weights is not None and self.method == "wcos":
            self.method = "ls"  # one w given: the one model for it
        if (self.fixed_weights is None) != (self.method == "wcos"):
            raise ValueError("--weights is needed by, and only by, methods ls and modpo")
        if not 0 < self.modpo_min_w1 <= 1:
            raise ValueError(f"modpo_min_w1 must be in (0, 1], got {self.modpo_min_w1}")
        if self.fixed_weights is not None:
            k = len(self.objectives) or None
            self.fixed_weights = tuple(float(x) for x in check_simplex(self.fixed_weights, k))
        if self.method != "wcos":  # one w: nothing to condition on, and no w to draw
            self.lora_mix, self.weight_sampling = False, "step"
        if self.weight_sampling == "pair" and self.penalty:
            raise ValueError(
                "--penalty needs --weight-sampling step: the cosine penalty compares the loss vector "
                "with one w, so it needs one w per step"
            )
        if self.lora_mix and not self.lora_rank:
            raise ValueError("--lora-mix conditions the LoRA on w and needs --lora-rank >= 1 (or pass --no-lora-mix)")
        if self.prompt_lr < 0:
            raise ValueError(f"prompt_lr must be >= 0 (0 = lr), got {self.prompt_lr}")
        if not self.beta > 0 or not self.alpha > 0 or self.penalty < 0:
            raise ValueError("beta and alpha must be > 0, penalty >= 0")
        if (
            min(
                self.prompt_tokens,
                self.prompt_rank,
                self.prompt_hidden,
                self.max_length,
                self.val_pairs,
                self.max_tokens,
            )
            < 1
            or min(self.max_pairs, self.lora_rank) < 0
        ):
            raise ValueError("sizes (prompt, lengths, pairs) must be >= 1 (max_pairs and lora_rank >= 0)")
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be in (0, 1), got {self.held_out}")
        if self.val_grid < 2:
            raise ValueError("val_grid must be >= 2")


def _cap(data: PreferenceSet, n: int, seed: int) -> PreferenceSet:
    """At most ``n`` records per objective, drawn with a seed (all when n = 0)."""
    if not n:
        return data
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(data.objective == k))[:n] for k in range(len(data.objectives))]
    return data.subset(np.sort(np.concatenate(keep)))


def load_splits(data: str, tokenizer, cfg: LLMConfig, fmt: str | None = None, splits=("train", "held-out")):
    """({split: PreferenceSet}, objectives, report) for splits among train | held-out | all.

    The data is read once. The held-out prompts are the same for every job
    with the same data, ``held_out`` and ``split_seed``, so ``llm front``
    measures on prompts the training never saw. The report counts the rows
    the loaders skipped and, in the splits read, the pairs over ``max_length``
    and those kept by cutting their prompt.
    """
    pairs, found, report = load_many(data, fmt, cfg.pku_filter)
    objectives = list(cfg.objectives) or found
    unknown = [o for o in objectives if o not in found]
    if unknown:
        raise ValueError(f"the data names objectives {found}, not {unknown}")
    train_pairs, held = split_pairs(pairs, cfg.held_out, cfg.split_seed) if set(splits) - {"all"} else ([], [])
    out = {}
    for split in splits:
        chosen = {"train": train_pairs, "held-out": held, "all": pairs}[split]
        data_set = PreferenceSet.build(chosen, tokenizer, objectives, cfg.max_length, report, cfg.truncate_prompt)
        # capped after the length filter, so that --max-pairs is what training gets
        data_set = _cap(data_set, cfg.max_pairs if split == "train" else cfg.val_pairs, cfg.split_seed)
        for o, n in data_set.counts().items():
            if n == 0:
                raise ValueError(f"no {split} pairs left for objective {o!r} (max_length {cfg.max_length}?)")
        out[split] = data_set
    return out, objectives, report


def load_split(data: str, tokenizer, cfg: LLMConfig, fmt: str | None = None, split: str = "train"):
    """One split of ``load_splits``: (PreferenceSet, objectives, report)."""
    sets, objectives, report = load_splits(data, tokenizer, cfg, fmt, (split,))
    return sets[split], objectives, report


def build_policy(base, cfg: LLMConfig, n_objectives: int) -> HPTModel:
    """LoRA (unless ``lora_rank`` is 0) + the prompt module around the frozen ``base``.

    A shared LoRA does not see w: what both objectives' pairs ask of it
    alike it learns for every w, and what they ask in opposite directions
    (on HH-RLHF: longer answers for helpful, shorter for harmless) cancels
    in it. ``lora_rank=0`` sends every update through the w-conditioned
    prompt instead; ``lora_mix`` lets the LoRA see w too, and on HH-RLHF
    only the latter made the front follow w (docs/results/hh-rlhf.md).
    """
    rank = cfg.lora_rank * (n_objectives if cfg.lora_mix else 1)  # w-mixed: one rank block per objective
    lora = add_lora(base, rank, cfg.lora_alpha * rank / cfg.lora_rank, cfg.lora_targets, cfg.seed) if rank else base
    return HPTModel.wrap(
        lora,
        n_objectives,
        cfg.prompt_tokens,
        cfg.prompt_rank,
        cfg.prompt_hidden,
        cfg.seed,
        conditioned=cfg.method == "wcos",
        alpha=cfg.alpha,
        mask=cfg.prompt_mask,
        lora_mix=cfg.lora_mix,
    ).set_compute(cfg.precision, cfg.attention)


def finetune_llm(
    data: str,
    out,
    cfg: LLMConfig,
    *,
    fmt: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    accelerator: Accelerator | None = None,
    base=None,
    reference_file=None,
    single_models=None,
    log=print,
) -> tuple[HPTModel, dict]:
    """Fine-tune ``cfg.model`` on the preference data ``data`` (``OBJ=PATH,...`` or a PKU path).

    ``base`` = (model, tokenizer) skips loading ``cfg.model`` (tests, the demo, comparisons);
    ``reference_file`` shares one reference cache between runs on the same data.
    ``method="modpo"`` needs ``single_models``: the policy folders of objectives 2..K alone
    (``--weights`` e_k), whose implicit rewards become the margins.
    """
    out = Path(out)
    prepare_out(out, resume, overwrite, POLICY_FILE)
    acc = accelerator or make_accelerator(cfg.report_to, out)
    model, tokenizer = base or load_base(cfg.model, prompt_template=cfg.prompt_template)
    use_prompt_template(tokenizer, cfg.prompt_template, cfg.model)
    sets, objectives, report = load_splits(data, tokenizer, cfg, fmt)
    train_set, vali = sets["train"], sets["held-out"]
    start_run(out, acc, "llm finetune", {"data": data, "format": fmt}, cfg)
    if cfg.fixed_weights is not None:
        check_simplex(cfg.fixed_weights, len(objectives))
    # one w: the pairs of objectives it weights by 0 leave training (the reference cache still serves every w);
    # MO-DPO learns from the first objective's pairs alone
    keep = np.arange(len(train_set))
    if cfg.method == "modpo":
        keep = np.flatnonzero(train_set.objective == 0)
        single_diff = modpo_margins(single_models or [], model, train_set, cfg, cfg.progress)
    elif cfg.fixed_weights is not None:
        keep = np.flatnonzero(np.asarray(cfg.fixed_weights)[train_set.objective] > 0)
    set_seed(cfg.seed)
    policy = build_policy(model, cfg, len(objectives)).to(acc.device)
    reference_file = Path(reference_file) if reference_file else out / REFERENCE_FILE
    needed = reference_batches(train_set, keep, cfg)
    # shorter than an epoch: each step scores its own pairs' reference when it first needs them, and the
    # first validation its pairs', so the first step comes after one forward, not the whole plan's
    lazy = needed is not None and cfg.cache_reference and cfg.method != "modpo"
    t0 = time.perf_counter()
    scored = reference_logprobs(
        policy,
        {"train": train_set, "vali": vali} if cfg.cache_reference else {"vali": vali},
        cfg,
        reference_file if cfg.cache_reference else None,
        cfg.progress and acc.is_main_process,
        batches={"train": [], "vali": []} if lazy else {"train": needed},
        accelerator=acc,
    )
    reference_seconds = time.perf_counter() - t0
    full, used = train_set, np.unique(np.concatenate([train_set.chosen[keep], train_set.rejected[keep]]))
    if cfg.method == "modpo":
        if (
            train_set.ref is None
            or np.isnan(train_set.ref[np.r_[train_set.chosen[keep], train_set.rejected[keep]]]).any()
        ):
            train_set.ref = sequence_scores(policy, train_set, reference=True, max_tokens=cfg.max_tokens)
        ref_diff = train_set.ref[train_set.chosen] - train_set.ref[train_set.rejected]
        weighted = np.asarray(cfg.fixed_weights)[1:].sum()
        train_set.margin = cfg.beta * (single_diff - weighted * ref_diff)
    train_set = train_set.subset(keep) if cfg.fixed_weights is not None else train_set
    task = (MODPOTask if cfg.method == "modpo" else PreferenceTask)(cfg, vali, acc)
    if lazy:  # the plan in the training set's own numbering (``subset`` keeps ``used``, in order)
        remap = np.full(len(full.sequences), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        task.step_reference = StepReference(train_set, [remap[b] for b in needed], cfg)
    if acc.is_main_process:
        log(report.summary())
        if cfg.cache_reference:
            reached = len(train_set.sequences) if needed is None else sum(len(b) for b in needed)
            when = "each step scores the sequences it is the first to use" if lazy else f"{scored} scored now"
            log(
                f"reference log-probs: {when} ({reference_seconds:.1f} s before the first step; the rest read from "
                f"the cache); the planned steps use {reached} of the {len(train_set.sequences)} training sequences"
            )
        log(
            f"training pairs {train_set.counts()}, validation pairs {vali.counts()}; forwards in {policy.precision}"
            f"{' (auto)' if cfg.precision == 'auto' else ''}, {policy.attention} attention"
        )
    state = train(
        policy,
        task,
        train_set,
        cfg,
        out,
        job=job_settings(cfg, data=data, objectives=objectives),
        resume=resume,
        accelerator=acc,
        desc=f"llm {cfg.method}",
    )
    step_reference = getattr(task, "step_reference", None)
    if step_reference is not None:  # the values the steps computed join the cache, for fronts and resumed runs
        full.ref[used] = np.where(np.isnan(full.ref[used]), train_set.ref, full.ref[used])
        reference_logprobs(
            policy, {"train": full, "vali": vali}, cfg, reference_file, False, {"train": [], "vali": []}, acc, save=True
        )
        if acc.is_main_process:
            log(
                f"reference log-probs: {step_reference.scored} sequences scored by the steps that first used them, "
                f"{step_reference.seconds:.1f} s in all ({step_reference.seconds / max(state.global_step, 1):.2f} s "
                "a step)"
            )
    metrics = {
        "train_seconds": round(state.seconds, 3),
        "steps": state.global_step,
        "seconds_per_step": round(state.seconds / max(state.global_step, 1), 4),
        "reference_seconds": round(reference_seconds, 3),  # this process's pass (a resumed run's: the rest)
        "reference_seconds_in_steps": round(step_reference.seconds, 3) if step_reference else 0.0,
        "epochs_run": state.epoch,
        "best_val": state.best,
        "trainable_params": count_trainable(policy),
        "processes": acc.num_processes,
        "train_pairs": train_set.counts(),
        "skipped_rows": dict(report.skipped),
    }
    info = POLICY_FORMAT | {
        "base_model": cfg.model,
        "objectives": objectives,
        "beta": cfg.beta,
        "method": cfg.method,
        "fixed_weights": cfg.fixed_weights,
        "data": data,
        "held_out": cfg.held_out,
        "split_seed": cfg.split_seed,
        "max_length": cfg.max_length,
        "training": metrics,
        "config": to_dict(cfg),
    }
    return policy, finish_run(out, acc, lambda: save_policy(policy, tokenizer, out, info), metrics, state)


def write_front(
    model_dir,
    data: str | None,
    out,
    *,
    grid: int | None = None,
    split: str = "held-out",
    max_pairs: int | None = None,
    fmt: str | None = None,
    policy=None,
    tokenizer=None,
    progress: bool = True,
    keep_pairs: bool = False,
    reference_file=None,
    precision: str | None = "fp32",
    attention: str | None = None,
) -> dict:
    """Held-out front of the policy in ``model_dir`` -> front.json and front.png in ``out``.

    ``split="held-out"`` re-derives the prompts the training kept out (same
    data, fraction and seed as in policy.json); ``"all"`` uses every pair of
    ``data`` (a separate test file). ``data`` None: the training data.
    ``keep_pairs``: front.json also holds every pair's margin at every w.
    ``reference_file``: the reference log-probs of the front's pairs are read
    from (or added to) this cache, so a second front of the same pairs (another
    grid, another policy from the same base) skips the reference pass.
    ``precision`` / ``attention``: how the forwards run (float32, and the attention kernel as trained;
    None: the precision as trained). bf16 moves log-probs enough to flip near-tied pairs between weights.
    """
    if split not in ("held-out", "all"):
        raise ValueError(f"split must be held-out or all, got {split!r}")
    info = read_policy_info(model_dir)
    cfg = from_dict(LLMConfig, info["config"], f"{model_dir}/{POLICY_FILE}")
    if max_pairs is not None:
        cfg.val_pairs = max_pairs
    data = data or info["data"]
    weights = weight_grid(len(info["objectives"]), grid, "lattice", cfg.seed)
    if policy is None:
        policy, tokenizer, _ = load_policy(model_dir, precision=precision, attention=attention)
    else:
        if precision or attention:
            policy.set_compute(precision or policy.requested_precision, attention)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = use_prompt_template(AutoTokenizer.from_pretrained(str(model_dir)), cfg.prompt_template)
    test, _, _ = load_split(data, tokenizer, cfg, fmt, split)
    reference_logprobs(policy, {"front": test}, cfg, Path(reference_file) if reference_file else None, progress)

    def scores_at(w):
        return sequence_scores(policy, test, torch.tensor(w, dtype=torch.float32), max_tokens=cfg.max_tokens)

    front = preference_front(test, weights, scores_at, cfg.beta, progress=progress, keep_pairs=keep_pairs) | {
        "model": str(model_dir),
        "data": data,
        "split": split,
    }
    out = Path(out)
    write_json(out / "front.json", front)
    write_model_card(model_dir, read_policy_info(model_dir), front)  # the policy's card shows its measured front
    plot_fronts(
        {f"Weight-COS-DPO (HPT + LoRA), beta={cfg.beta}": front},
        out / "front.png",
        title=f"Held-out preference accuracy, HV {front['hypervolume']:.4g}",
    )
    return front
