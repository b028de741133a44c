"""The reference log-probs of DPO: computed once per sequence, kept in a cache file beside the run.

The reference (the base with adapters and prefix off) depends on neither w
nor training, so each sequence's log-prob is computed once and stored in
``reference_logprobs.safetensors``, keyed by the model, the token ids and how
the forwards ran. A run scores only what its planned steps reach.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from ..atomic import atomic_file
from ..data.tokenize import PreferenceSet
from ..evaluation.preference import sequence_scores

REFERENCE_FILE = "reference_logprobs.safetensors"


def _fingerprint(model_name: str, policy, data: PreferenceSet) -> str:
    """Model, token ids and, under bf16, how the forwards ran: bf16 log-probs differ from float32 ones by
    more than a DPO margin can ignore, and so do two attention kernels in bf16 (in float32 they agree)."""
    compute = "" if policy.precision == "fp32" else f"|{policy.precision}|{policy.attention}"
    h = hashlib.sha256((model_name + compute).encode())
    for p, r in data.sequences:
        h.update(np.asarray(p + [-1] + r + [-2], dtype=np.int64).tobytes())
    return h.hexdigest()


def reference_logprobs(
    policy,
    sets: dict[str, PreferenceSet],
    cfg,
    path: Path | None,
    progress: bool = True,
    batches: dict | None = None,
    accelerator=None,
    save: bool = False,
) -> int:
    """Fill each set's ``ref``, reading from ``path`` what a set made from the same model and sequences
    already has, and return how many sequences were scored.

    ``batches``: per set name, the forwards (lists of sequence ids) that hold what the caller will use
    (default: all of the set's sequences); a forward is run when any of its sequences is still missing,
    and the others stay NaN until a later call needs them. The file is shared by name: sets it holds
    under other names (training's ``train``, a front's ``front``) are kept when it is written again, so
    a front read after training does not cost training its cache.

    ``accelerator``: under N processes each runs every N-th of the forwards and the results are
    gathered, so the pass costs 1/N per process; every process reads the cache, the main one writes it.
    ``save``: the values already in each set's ``ref`` (filled step by step, ``StepReference``) are
    kept, merged with the cache's, and written even when nothing new was scored here.
    """
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator is not None else (1, 0)
    batches = batches or {}
    prints = {name: _fingerprint(cfg.model, policy, s) for name, s in sets.items()}
    stored, kept, kept_prints = {}, {}, {}
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            for name in f.keys():
                if name in sets and meta.get(name) == prints[name]:
                    stored[name] = f.get_tensor(name).double().numpy()
                elif name not in sets and name in meta:
                    kept[name], kept_prints[name] = f.get_tensor(name), meta[name]
    scored = 0
    for name, s in sets.items():
        n = len(s.sequences)
        keep = save and s.ref is not None and len(s.ref) == n
        ref = np.asarray(s.ref, np.float64).copy() if keep else np.full(n, np.nan)
        if name in stored:
            missing = np.isnan(ref)
            ref[missing] = stored[name][missing]
        todo = batches.get(name)
        if todo is None:
            todo = s.sequence_batches(cfg.max_tokens)
        todo = [b for b in todo if len(b) and np.isnan(ref[np.asarray(b, dtype=np.int64)]).any()]
        if todo:
            fresh = sequence_scores(
                policy,
                s,
                reference=True,
                max_tokens=cfg.max_tokens,
                progress=progress,
                desc=f"reference log-probs ({name})",
                batches=todo[rank::world],
            )
            if world > 1:  # every process gets every forward's values (floats travel exactly)
                from accelerate.utils import gather_object

                mine = np.flatnonzero(~np.isnan(fresh))
                for ids, values in gather_object([(mine.tolist(), fresh[mine].tolist())]):
                    fresh[np.asarray(ids, dtype=np.int64)] = values
            done = ~np.isnan(fresh)
            ref[done], scored = fresh[done], scored + int(done.sum())
        s.ref = ref
    if path is not None and (scored or save) and (accelerator is None or accelerator.is_main_process):
        tensors = kept | {name: torch.from_numpy(s.ref) for name, s in sets.items()}
        with atomic_file(path) as f:
            f.write(safetensors_bytes(tensors, metadata=kept_prints | prints))
    return scored


class StepReference:
    """A run shorter than an epoch: each step scores the reference of the sequences it is the first to
    use, just before it runs, in the very forward ``reference_batches`` plans for it (so the values equal
    an up-front pass's, and a resumed run's), rather than all the planned steps' before the first one.

    ``per_step[s]``: sequence ids (in ``data``'s numbering) step s is the first to use.
    """

    def __init__(self, data: PreferenceSet, per_step, cfg):
        self.data, self.per_step, self.cfg = data, [np.asarray(b, dtype=np.int64) for b in per_step], cfg
        self.seconds, self.scored = 0.0, 0

    def before_step(self, policy, step: int):
        if step >= len(self.per_step):
            return
        ids = self.per_step[step]
        if not len(ids) or not np.isnan(self.data.ref[ids]).any():
            return
        t0 = time.perf_counter()
        was_training = policy.training
        policy.eval()  # the reference never sees dropout
        try:
            fresh = sequence_scores(policy, self.data, reference=True, max_tokens=self.cfg.max_tokens, batches=[ids])
        finally:
            policy.train(was_training)
        self.data.ref[ids] = fresh[ids]
        self.seconds, self.scored = self.seconds + time.perf_counter() - t0, self.scored + len(ids)


def reference_batches(data: PreferenceSet, records: np.ndarray, cfg) -> list[np.ndarray] | None:
    """The reference forwards a run over ``records`` of ``data`` needs (None: every sequence of ``data``).

    A run shorter than an epoch needs one forward per planned step, holding the sequences that step is
    the first to use; a sequence is always scored beside the same others, so a short run, its resumed
    continuation within the epoch and an uninterrupted run get the very same values. A run of an epoch
    or more scores every sequence, in length-sorted forwards (the least padding).
    """
    used = np.unique(np.concatenate([data.chosen[records], data.rejected[records]]))  # as ``subset`` numbers them
    run = data.subset(records)
    steps = run.epoch_batches(cfg.batch_size, cfg.seed, 0)
    if not cfg.max_steps or cfg.max_steps >= len(steps):
        return None
    seen, out = np.zeros(len(run.sequences), dtype=bool), []
    for step in steps[: cfg.max_steps]:
        seqs = np.unique(np.concatenate([run.chosen[step], run.rejected[step]]))
        seqs = seqs[~seen[seqs]]
        seen[seqs] = True
        out.append(used[seqs])
    return out
