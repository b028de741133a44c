"""Checkpoints: the state of a training run, written so that a crash loses at most the steps since.

``checkpoint/`` in a run's folder holds the trained tensors (the frozen base
is left out), the best model so far, the optimizer, the random state of the
CPU and of every CUDA device, and the trainer state, all in safetensors and
JSON (no pickle), swapped in atomically. The model's tensors are gathered
through Accelerate and the optimizer's through torch's distributed
state-dict helpers, keyed by parameter name: sharded training (FSDP)
writes whole tensors, and a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from ..atomic import atomic_dir, check_format, recover_dir, write_json

CHECKPOINT = "checkpoint"
# settings that may change when a run is resumed
RESUMABLE = ("epochs", "max_steps", "min_steps", "progress", "patience", "checkpoint_every")
CHECKPOINT_FORMAT = {"format": "cosdpo-checkpoint", "version": 2}  # 2: optimizer state keyed by name


def job_settings(cfg, **extra) -> dict:
    """What a checkpoint must have been made with for ``--resume`` to continue it."""
    return {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE} | extra


@dataclass
class TrainState:
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already taken
    global_step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    seconds: float = 0.0  # training wall time, summed over resumed runs
    stopped_early: bool = False
    history: list = field(default_factory=list)


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state, whole and keyed by parameter name, on the CPU.

    ``model`` may be the prepared (wrapped, possibly sharded) model; under
    FSDP this gathers every shard, so every process must call it.
    """
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, saved: dict):
    """Load ``optimizer_state``'s dict into ``optimizer`` (of the prepared model: each shard takes its part)."""
    set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))


def _flatten_optimizer(opt_state: dict):
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for name, st in opt_state["state"].items():
        meta["state"][name] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][name][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {name: dict(extra) for name, extra in meta["state"].items()}
    for key, v in tensors.items():
        name, k = key.rsplit(".", 1)  # parameter names have dots; Adam's state keys have none
        state[name][k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def trained_state(model, acc: Accelerator | None = None) -> dict:
    """The tensors training changes: trainable parameters and buffers. A frozen base
    (the ranker's, or an LLM's hundreds of MB) stays out of every checkpoint.

    With ``acc``, ``model`` may be the prepared (wrapped, possibly sharded) model: Accelerate's
    ``get_state_dict`` gathers the full tensors, so every process must call it (FSDP, ZeRO-3).
    """
    inner = acc.unwrap_model(model) if acc is not None else model
    keep = {n for n, p in inner.named_parameters() if p.requires_grad} | {n for n, _ in inner.named_buffers()}
    full = acc.get_state_dict(model) if acc is not None else model.state_dict()
    return {k: v.detach().cpu().clone().contiguous() for k, v in full.items() if k in keep}


def rng_states() -> dict:
    """Every device's random state: the CPU's, and each CUDA device's, so a resumed GPU run is the run it continues."""
    states = {"__torch_rng__": torch.get_rng_state()}
    if torch.cuda.is_available():
        states |= {f"__cuda_rng__.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return states


def set_rng_states(tensors: dict):
    """Restore (and remove from ``tensors``) the states ``rng_states`` saved; CUDA's where this machine has them."""
    torch.set_rng_state(tensors.pop("__torch_rng__"))
    cuda = [
        tensors.pop(k)
        for k in sorted((k for k in list(tensors) if k.startswith("__cuda_rng__.")), key=lambda k: int(k.split(".")[1]))
    ]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def load_trained(model, tensors: dict):
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"the checkpoint holds tensors this model lacks: {unexpected[:3]}")


def save_checkpoint(path: Path, tensors: dict, best_state, opt_state: dict, state: TrainState, job: dict):
    """``tensors`` and ``opt_state``: ``trained_state`` and ``optimizer_state`` (gathered on every process
    before the main one writes)."""
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        if best_state is not None:
            save_file(best_state, str(tmp / "best.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(opt_state)
        save_file(opt_tensors | rng_states(), str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", opt_meta)
        write_json(tmp / "state.json", CHECKPOINT_FORMAT | {"state": asdict(state), "job": job})


def load_checkpoint(path: Path, model, job: dict):
    """Load the model's tensors and the random states; return the trainer state, the best model so far and
    the optimizer's state (for ``load_optimizer_state`` once the model is prepared)."""
    found = recover_dir(path)
    if found is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {path.parent}")
    saved = json.loads((found / "state.json").read_text())
    check_format(saved, CHECKPOINT_FORMAT, found / "state.json")
    job = json.loads(json.dumps(job))  # tuples become lists, as in the saved copy
    if saved["job"] != job:
        diff = sorted(k for k in set(job) | set(saved["job"]) if job.get(k) != saved["job"].get(k))
        raise ValueError(f"--resume: the checkpoint in {found} was made with different settings: {diff}")
    load_trained(model, load_file(str(found / "model.safetensors")))
    opt_tensors = load_file(str(found / "optimizer.safetensors"))
    set_rng_states(opt_tensors)
    opt_state = _unflatten_optimizer(opt_tensors, json.loads((found / "optimizer.json").read_text()))
    best = found / "best.safetensors"
    best_state = load_file(str(best)) if best.exists() else None
    return TrainState(**saved["state"]), best_state, opt_state


def keep_steps(path: Path, last_step: int):
    """Keep the lines of steps.jsonl up to ``last_step`` (all of a new run's: none)."""
    lines = path.read_text().splitlines() if path.is_file() and last_step else []
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in kept))
