"""One training loop for every ranking job, on Accelerate.

The same code runs as one CPU process or under ``accelerate launch`` on
several processes or GPUs. A *task* supplies what differs between jobs:

- ``terms(model, batch, step) -> (sums, counts)``: per-objective loss sums
  over the process's groups, and how many groups counted;
- ``combine(L, step) -> scalar``: the objective of the whole step from the
  per-objective mean losses L (ListNet: L[0]; Weight-COS: w.L - lambda cos);
- ``validate(model) -> float``: higher is better, for early stopping.

Why sums and counts: every process reduces them, so L is the mean over the
*global* batch, and each process back-propagates the linearisation
``world * sum_k dF/dL_k * sums_k / counts_k``. After DDP averages gradients
this is exactly the gradient of F(L) on the global batch, so N processes
with a share each take the same step as one process with everything, even
though the cosine penalty is not linear in L.

Checkpoints (``checkpoint.py``) are written at every epoch end and every
``checkpoint_every`` steps. The batch order of an epoch and the weights
drawn at a step depend only on (seed, epoch, step), so ``resume`` continues
exactly where the checkpoint left off.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import importlib.util
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..atomic import clean_partial_writes, write_json
from ..config import RUN_FILE, check_choices, check_finite, option, to_dict, write_run_config
from ..data.groups import RankingSet
from .checkpoint import (
    CHECKPOINT,
    TrainState,
    keep_steps,
    load_checkpoint,
    load_optimizer_state,
    load_trained,
    optimizer_state,
    save_checkpoint,
    trained_state,
)

STEPS_FILE = "steps.jsonl"
MAX_VALIDATIONS = 50  # a run of many short epochs validates at most about this often
# Accelerate's trackers, with the packages any of which serves each
TRACKERS = {"none": (), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
LR_SCHEDULES = ("constant", "cosine")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The multiplier of every group's lr at ``step`` (0-based) of ``total``.

    Why cosine: without early stopping the last step's weights are the
    model, and at a constant lr they still jump with the w drawn at that
    step; decaying to 0 lets the run end in a settled state. Why warmup:
    Adam's first steps divide by a second moment estimated from a handful of
    gradients; a linear ramp over ``warmup`` steps lets the estimate settle
    first . The ramp and
    decay are those of transformers'
    ``get_{constant,cosine}_schedule_with_warmup``, so settings carry over
    from TRL. The factor depends on the step and the planned total only, so a
    resumed run needs no scheduler state (raising epochs or max_steps on
    resume stretches it).
    """
    if step < warmup:
        return step / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (min(step, total) - warmup) / (total - warmup)))


@dataclass
class TrainConfig:
    """Options every training job shares (the budget, the optimizer, checkpoints)."""

    epochs: int = option(20, "Passes over the training data (an upper bound with early stopping).")
    max_steps: int = option(0, "Optimizer steps; > 0 overrides --epochs (as many passes as it takes).")
    min_steps: int | None = option(
        0, "Optimizer steps the run makes at least: --epochs grow to reach them and early stopping waits for them."
    )
    batch_size: int = option(32, "Query groups (ranking) or preference pairs (LLM) per step, over all processes.")
    lr: float = option(1e-3, "AdamW learning rate.")
    lr_schedule: str = option(
        "constant", "constant, or cosine: decay the lr to 0 over the planned steps.", choices=LR_SCHEDULES
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", panel="Experimental")
    grad_clip: float = option(1.0, "Clip the gradient norm at this value (0: no clipping).", panel="Experimental")
    warmup_steps: int = option(0, "Ramp the lr linearly from 0 over the first N steps.", panel="Experimental")
    grad_accum: int = option(1, "Micro-batches per optimizer step (memory: batch-size / grad-accum per forward).")
    seed: int = option(0, "Seed of initialisation, batch order and the sampled weights.")
    patience: int = option(5, "Stop after this many validations without improvement (0: never stop early).")
    val_every: int = option(
        1, f"Validate every N epochs (and at the end; at most about {MAX_VALIDATIONS} times a run).", panel="Evaluation"
    )
    checkpoint_every: int = option(0, "Also checkpoint every N steps (0: at epoch ends only).", panel="Runtime")
    progress: bool = option(True, "Show progress bars.", panel="Runtime")
    report_to: str = option(
        "none",
        "Also log every step to this Accelerate tracker (its package installed); "
        "steps.jsonl in --out is always written.",
        choices=TRACKERS,
        panel="Runtime",
    )

    def __post_init__(self):
        check_choices(self)
        check_finite(self)
        for name in ("epochs", "batch_size", "val_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "checkpoint_every", "max_steps", "warmup_steps", "min_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than max_steps ({self.max_steps})")
        if self.report_to != "none" and not any(importlib.util.find_spec(m) for m in TRACKERS[self.report_to]):
            raise ValueError(f"--report-to {self.report_to} needs one of the packages {TRACKERS[self.report_to]}")
        if self.grad_accum > self.batch_size:
            raise ValueError(f"grad_accum ({self.grad_accum}) cannot exceed batch_size ({self.batch_size})")


class Task(Protocol):
    """What a job supplies to ``train``: its loss terms, how they combine, and a validation score."""

    names: list[str]  # what each loss term is, for messages

    def terms(self, model, batch: dict, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-objective loss sums over this process's groups, and how many groups counted in each."""

    def combine(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """The step's objective from the per-objective mean losses."""

    def validate(self, model) -> float:
        """Higher is better; drives early stopping and the choice of the final weights."""


def prepare_out(out: Path, resume: bool, overwrite: bool, marker: str):
    """Refuse to train over a finished model (``marker``) or a checkpoint unless told to, and clear what
    an interrupted write left there."""
    if not resume and ((out / marker).exists() or (out / CHECKPOINT).exists()) and not overwrite:
        raise FileExistsError(
            f"{out} already holds a model or checkpoint: pass --resume to continue it, "
            f"--overwrite to replace it, or choose another --out"
        )
    clean_partial_writes(out)


def start_run(out: Path, acc: Accelerator, command: str, inputs: dict, cfg) -> None:
    """Write ``run.yaml`` (the command, its inputs and every resolved option) once the data has loaded,
    before training: ``cosdpo COMMAND --config run.yaml`` repeats the run, also when this one is interrupted."""
    if acc.is_main_process:
        write_run_config(out / RUN_FILE, command, inputs | to_dict(cfg))
    acc.wait_for_everyone()


def finish_run(out: Path, acc: Accelerator, save, metrics: dict, state: TrainState) -> dict:
    """The end of every training job: ``save()`` the model, then metrics.json and train_log.json."""
    if acc.is_main_process:
        save()
        write_json(out / "metrics.json", metrics)
        write_json(out / "train_log.json", state.history)
    acc.wait_for_everyone()
    return metrics


@functools.cache  # process-wide: set once, however many models a job trains
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees, for the next step to reuse.

    A step allocates and frees the same activations, a few MB each, every
    step. By default glibc trims the top of its heap once more than twice its
    largest recent block is free there, so the next step takes those pages
    from the kernel again: 1,600 page faults a step of the base ranker on
    real MSLR lists. Here blocks under 32 MiB come from the heap and up to
    256 MiB of free heap stays with the process: about 50 faults a step, and
    on a 2-core VM the step ran 1.08x faster on average and 1.25x in its
    slowest passes. Process-wide; Linux with glibc only (elsewhere it does
    nothing). Returns whether it applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 256 << 20))


def make_accelerator(report_to: str = "none", out=None) -> Accelerator:
    """Accelerate's state for this process.

    Under ``torchrun`` or ``accelerate launch --multi_gpu`` on a machine
    without GPUs, Accelerate would otherwise run N unrelated single
    processes; with ``cpu=True`` they form one gloo process group.
    """
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if report_to == "none":
        acc = Accelerator(cpu=cpu)
    else:
        acc = Accelerator(cpu=cpu, log_with=report_to, project_dir=str(out))
    atexit.unregister(leave_process_group)
    atexit.register(leave_process_group)
    return acc


def leave_process_group() -> None:
    """Close the process group while Python is still whole.

    A process that exits with its gloo group open can abort at
    interpreter shutdown ("terminate called without an active
    exception"): the group's worker threads still hold tensors whose
    release needs the interpreter. Run at exit by every process that
    made an accelerator; a no-op without a group.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(
    model,
    task,
    data: RankingSet,
    cfg: TrainConfig,
    out_dir,
    *,
    job: dict,
    resume: bool = False,
    accelerator: Accelerator | None = None,
    desc: str = "train",
) -> TrainState:
    """Train ``model`` in place; on return it holds the best validated weights."""
    acc = accelerator or make_accelerator()
    if acc.device.type == "cpu":
        keep_freed_memory()
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a task may give parts of the model their own lr (the LLM's prefix wants more than LoRA)
    groups = task.param_groups(model) if hasattr(task, "param_groups") else trainable
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a checkpoint's (decayed) lrs are loaded
    state, best_state, opt_state = TrainState(), None, None
    if resume:
        state, best_state, opt_state = load_checkpoint(ckpt_path, model, job)
    ddp_model, optimizer = acc.prepare(model, optimizer)
    if opt_state is not None:  # into the prepared model's optimizer: under FSDP each process takes its shards
        load_optimizer_state(ddp_model, optimizer.optimizer, opt_state)
    world, rank = acc.num_processes, acc.process_index
    steps_file = out_dir / STEPS_FILE
    if acc.is_main_process:
        keep_steps(steps_file, state.global_step)  # a resumed run rewrites the steps after its checkpoint
    if acc.log_with and not acc.trackers:  # the run folder's name, its scalar options as the run's config
        acc.init_trackers("runs", config={k: v for k, v in asdict(cfg).items() if isinstance(v, (int, float, str))})

    def log_step(metrics: dict):
        """One line per step in steps.jsonl, written as it goes (and to Accelerate's trackers, if any)."""
        record = {"step": state.global_step + 1, "epoch": state.epoch} | metrics
        if acc.is_main_process:
            with open(steps_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if acc.trackers:
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    n_batches = len(data.epoch_batches(cfg.batch_size, cfg.seed, 0))
    min_steps = 0 if cfg.max_steps else cfg.min_steps or 0
    epochs = max(cfg.epochs, -(-min_steps // n_batches))  # whole epochs, at least min_steps
    total = cfg.max_steps or epochs * n_batches
    if cfg.warmup_steps >= total:  # with max_steps the config refused it; epochs * batches is known only here
        raise ValueError(
            f"warmup_steps ({cfg.warmup_steps}) must be fewer than the run's {total} steps "
            f"({epochs} epochs of {n_batches} batches)"
        )
    if acc.is_main_process and not resume:
        acc.print(plan_line(desc, cfg, total, epochs, n_batches, min_steps, task, len(data)))
    # Why a cap: on small data an epoch is a step or two, and validating a front after every one
    # cost as much as the training itself
    val_every = max(cfg.val_every, math.ceil(math.ceil(total / n_batches) / MAX_VALIDATIONS))

    def checkpoint():
        tensors = trained_state(ddp_model, acc)  # on every process: sharded training gathers here
        opt_state = optimizer_state(ddp_model, optimizer.optimizer)
        if acc.is_main_process:
            save_checkpoint(ckpt_path, tensors, best_state, opt_state, state, job)
        acc.wait_for_everyone()

    bar = tqdm(
        total=total,
        initial=state.global_step,
        desc=desc,
        disable=not (cfg.progress and acc.is_local_main_process),
        dynamic_ncols=True,
    )

    def steps_left():
        return not cfg.max_steps or state.global_step < cfg.max_steps

    while (cfg.max_steps or state.epoch < epochs) and not state.stopped_early and steps_left():
        t0 = time.perf_counter()
        batches = data.epoch_batches(cfg.batch_size, cfg.seed, state.epoch)
        ddp_model.train()
        running = []
        for groups in batches[state.step_in_epoch :]:
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(cfg.lr_schedule, state.global_step, total, cfg.warmup_steps)
            if hasattr(task, "before_step"):  # e.g. the LLM reference of the pairs this step is the first to use
                task.before_step(model, state.global_step)
            if len(groups) >= world:  # a process with no groups could not join the gradient sync
                try:
                    metrics = train_step(
                        ddp_model, task, data, groups[rank::world], state.global_step, acc, optimizer, trainable, cfg
                    )
                except NonFiniteLoss as exc:
                    bar.close()
                    names = getattr(task, "names", None) or []
                    which = ", ".join(names[k] if k < len(names) else f"objective {k}" for k in exc.objectives)
                    kept = f"the last checkpoint in {ckpt_path} is kept" if ckpt_path.exists() else "no model is saved"
                    raise ValueError(
                        f"training stopped at step {state.global_step + 1}: the loss of {which} is not finite "
                        f"(lower --lr or --beta); {kept}"
                    ) from None
                running.append(metrics["loss"])
                log_step(metrics | {"lr": [g["lr"] for g in optimizer.param_groups]})
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            if running:
                bar.set_postfix(loss=f"{np.mean(running[-20:]):.4f}", refresh=False)
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                state.seconds += time.perf_counter() - t0
                checkpoint()
                t0 = time.perf_counter()
            if not steps_left():
                break
        if state.step_in_epoch == len(batches):  # a whole epoch, not one cut short by max_steps
            state.epoch += 1
            state.step_in_epoch = 0
        record = {
            "epoch": state.epoch,
            "step": state.global_step,
            "train_loss": float(np.mean(running)) if running else None,
        }
        if state.step_in_epoch or state.epoch % val_every == 0 or state.epoch == epochs or not steps_left():
            model.eval()
            score = float(task.validate(model))
            record["val"] = score
            if score > state.best or best_state is None:
                state.best, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                best_state = trained_state(ddp_model, acc)  # every process validates: each gathers
            else:
                state.bad_epochs += 1
                if cfg.patience and state.bad_epochs >= cfg.patience and state.global_step >= min_steps:
                    state.stopped_early = True
        state.seconds += time.perf_counter() - t0
        record["seconds"] = round(state.seconds, 3)
        state.history.append(record)
        if not bar.disable:
            bar.write(
                f"{desc} epoch {state.epoch}: "
                + ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float))
            )
        checkpoint()
    bar.close()
    if acc.trackers:
        acc.end_training()
    if best_state is not None:
        load_trained(model, best_state)
    bad = [name for name, t in trained_state(model).items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # a step whose loss was finite can still overflow the weights (the last step is never re-checked)
        raise ValueError(f"training produced non-finite weights ({bad[0]}): nothing is saved; lower --lr")
    model.eval()
    return state


def plan_line(
    desc: str, cfg: TrainConfig, total: int, epochs: int, n_batches: int, min_steps: int, task, n_groups: int
) -> str:
    """What the run will do, said before it starts: its optimizer steps and, for a conditioned model,
    its draws of w (``task.draws_per_step``: one a step, or one per query group), so that budgets
    compare across data sizes."""
    if cfg.max_steps:
        line = f"{desc}: {total:,} optimizer steps ({n_batches:,} a pass over the data)"
    else:
        line = f"{desc}: at most {total:,} optimizer steps ({epochs} epoch{'s' * (epochs != 1)} of {n_batches:,})"
        if cfg.patience:
            line += f", early stopping (patience {cfg.patience})" + (f" from step {min_steps:,}" if min_steps else "")
    draws = getattr(task, "draws_per_step", 0)
    if draws == 1:
        line += f"; {total:,} draws of w"
    elif draws:
        line += f"; {round(total * n_groups / n_batches):,} draws of w (one per query group)"
    return line


class NonFiniteLoss(ArithmeticError):
    """A step's loss (of the objectives listed) is NaN or infinite: nothing of it is applied."""

    def __init__(self, objectives: list[int]):
        super().__init__(f"non-finite loss of objectives {objectives}")
        self.objectives = objectives


def batch_terms(task, model, data, groups, step, device):
    """``task.terms`` over ``groups``: for ranking data, one forward per run of similar list lengths
    (``RankingSet.length_buckets``), whose per-objective sums and counts add up to the batch's."""
    runs = data.length_buckets(groups) if hasattr(data, "length_buckets") else [groups]
    parts = [task.terms(model, data.batch(run, device), step) for run in runs]
    if len(parts) == 1:
        return parts[0]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def train_step(model, task, data, groups, step, acc, optimizer, trainable, cfg: TrainConfig) -> dict:
    """One optimizer step over this process's ``groups``, in ``grad_accum`` micro-batches.

    With one micro-batch the step is exact (see the module docstring). With
    several, each micro-batch's objective is linearised at its own losses;
    when the task can count the step's groups per objective up front
    (``task.counts``), every micro-batch divides by the whole step's counts,
    so the step is exact whenever ``combine`` is linear in L (Weight-COS with
    lambda = 0, DPO-LS) and the cosine penalty is approximated. Otherwise
    micro-batch means are averaged, as most accumulating trainers do.

    Returns the step's metrics over the global batch: ``loss``, each
    objective's mean loss, and what the task tallies per objective
    (``task.tally``: preference accuracy and reward margins for an LLM).
    """
    chunks = [c.tolist() for c in np.array_split(np.asarray(groups), cfg.grad_accum) if len(c)]
    step_counts = None
    if len(chunks) > 1 and hasattr(task, "counts"):
        step_counts = acc.reduce(task.counts(data, groups).to(acc.device, torch.float32), "sum")
    totals, mean_losses, counted = [], 0.0, 0.0
    for i, chunk in enumerate(chunks):
        sync = acc.no_sync(model) if i < len(chunks) - 1 else contextlib.nullcontext()
        with sync:
            sums, counts = batch_terms(task, model, data, chunk, step, acc.device)
            g_sums = acc.reduce(sums.detach().clone(), "sum")
            g_counts = acc.reduce(counts.detach().to(sums.dtype).clone(), "sum")
            losses = (g_sums / g_counts.clamp_min(1)).requires_grad_(True)
            if not torch.isfinite(losses).all():  # before any of it reaches the weights
                raise NonFiniteLoss(torch.nonzero(~torch.isfinite(losses)).flatten().tolist())
            total = task.combine(losses, step)
            (coef,) = torch.autograd.grad(total, losses)
            if step_counts is not None:
                surrogate = (coef * sums / step_counts.to(sums.dtype).clamp_min(1)).sum()
            else:
                surrogate = (coef * sums / g_counts.clamp_min(1)).sum() / len(chunks)
            acc.backward(acc.num_processes * surrogate)
        totals.append(float(total.detach()))
        mean_losses, counted = mean_losses + g_sums.detach().double(), counted + g_counts.detach().double()
    if cfg.grad_clip:
        acc.clip_grad_norm_(trainable, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    names = getattr(task, "names", None) or [str(k) for k in range(len(counted))]
    metrics = {"loss": float(np.mean(totals))}
    present = (counted > 0).tolist()  # an objective with no pair or group in this step reports nothing
    means = (mean_losses / counted.clamp_min(1)).tolist()
    metrics |= {f"loss/{n}": v for n, v, here in zip(names, means, present) if here}
    tally = getattr(task, "tally", {}).pop(step, None)  # {name: (K,) sums over this process's pairs}
    if tally:
        for key, sums in tally.items():
            values = (acc.reduce(sums.to(acc.device, torch.float64), "sum").cpu() / counted.cpu().clamp_min(1)).tolist()
            metrics |= {f"{key}/{n}": v for n, v, here in zip(names, values, present) if here}
    if hasattr(task, "weights"):
        metrics["w"] = [round(float(x), 6) for x in task.weights(step)]
    return metrics
