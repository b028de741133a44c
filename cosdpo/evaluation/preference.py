"""LLM fronts: held-out preference accuracy per objective at each w (docs/method.md section 8).

A pair counts as won when the policy's implicit-reward margin
beta * ((s_c - s_c^ref) - (s_r - s_r^ref)) is positive; an exact tie counts a
half, so the reference itself scores 0.5 on every objective (``base_point``).
The front is the accuracy vector at each grid weight, with the mean margin
beside it, and its hypervolume (reference point at the origin unless set),
in the same ``front.json`` shape as ranking.

Fronts are computed through ``scores_at(w)``, a function giving every
sequence's log-prob under the model for w, so the conditioned policy, one
DPO-LS model per w, and a soup all go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.tokenize import PreferenceSet
from ..losses import response_window, sequence_logprobs
from .metrics import hypervolume
from .processes import gather_shares, my_share


@torch.no_grad()
def sequence_scores(
    policy,
    data: PreferenceSet,
    w=None,
    *,
    reference: bool = False,
    max_tokens: int = 4096,
    progress: bool = False,
    desc: str = "scoring",
    batches=None,
    accelerator=None,
) -> np.ndarray:
    """log pi(y | x) of every sequence of ``data`` under ``w`` (or under the reference).

    ``batches``: lists of sequence ids to score, one forward each (default: every sequence, in length
    order within ``max_tokens``); the sequences in none of them stay NaN. ``accelerator`` (with the
    default batches): each of its processes scores 1/N of them, and all end with every score.
    """
    device = next(policy.parameters()).device
    out = np.full(len(data.sequences), np.nan if batches is not None else 0.0, dtype=np.float64)
    if batches is None:
        batches = my_share(data.sequence_batches(max_tokens), accelerator)
    else:
        accelerator, batches = None, [list(map(int, b)) for b in batches]
    for ids in tqdm(batches, desc=desc, disable=not progress, leave=False):
        b = data.pad(ids, device)
        keep = response_window(b["response_mask"])
        logits = (
            policy.reference_logits(b["input_ids"], b["attention_mask"], keep)
            if reference
            else policy(b["input_ids"], b["attention_mask"], w, keep)
        )
        out[ids] = sequence_logprobs(logits, b["input_ids"], b["response_mask"]).double().cpu().numpy()
    return gather_shares(out, accelerator)


def margins(data: PreferenceSet, scores: np.ndarray, beta: float) -> np.ndarray:
    """Implicit-reward margin of every record."""
    if data.ref is None:
        raise ValueError("the reference log-probs are not computed yet (PreferenceSet.ref)")
    reward = beta * (scores - data.ref)
    return reward[data.chosen] - reward[data.rejected]


def preference_points(data: PreferenceSet, scores: np.ndarray, beta: float):
    """(accuracy, mean margin) per objective; an objective without pairs gives NaN."""
    m = margins(data, scores, beta)
    won = (m > 0) + 0.5 * (m == 0)
    acc = np.full(len(data.objectives), np.nan)
    mean = np.full(len(data.objectives), np.nan)
    for k in range(len(data.objectives)):
        sel = data.objective == k
        if sel.any():
            acc[k], mean[k] = won[sel].mean(), m[sel].mean()
    return acc, mean


def logprob_shift(data: PreferenceSet, scores: np.ndarray) -> float:
    """Mean change of log-prob per response token against the reference, over the distinct responses.

    Why a front needs it: DPO sums log-probs over tokens, so lowering every
    token's probability lowers long responses most, and wins every pair whose
    chosen response is the shorter without learning anything else. A w whose
    shift is far below 0 (a few nats a token) is such a broken language
    model, however its accuracies read.
    """
    if data.ref is None:
        raise ValueError("the reference log-probs are not computed yet (PreferenceSet.ref)")
    lengths = np.array([len(response) for _, response in data.sequences], dtype=np.float64)
    return float(np.mean((scores - data.ref) / lengths))


def preference_front(
    data: PreferenceSet,
    grid,
    scores_at: Callable[[np.ndarray], np.ndarray],
    beta: float,
    reference_point=None,
    progress: bool = False,
    keep_pairs: bool = False,
) -> dict:
    """Accuracy and mean margin per objective at each w of ``grid``.

    ``logprob_shift`` holds each w's mean log-prob change per response token
    (see ``logprob_shift``). ``keep_pairs`` also returns every record's margin at every w
    (``pair_margins``, with ``pair_objective``): held-out sets are small, and
    comparing two weights pair by pair (a sign test) separates an effect of w
    from the noise that the accuracies alone cannot.
    """
    grid = np.asarray(grid, dtype=np.float64)
    points, mean_margins, shifts, pair_margins = [], [], [], []
    for w in tqdm(grid, desc="front", disable=not progress):
        scores = scores_at(w)
        acc, m = preference_points(data, scores, beta)
        points.append(acc)
        mean_margins.append(m)
        shifts.append(logprob_shift(data, scores))
        if keep_pairs:
            pair_margins.append(margins(data, scores, beta).tolist())
    points = np.array(points)
    ref = np.zeros(len(data.objectives)) if reference_point is None else np.asarray(reference_point, float)
    return {
        "objectives": list(data.objectives),
        "metric": "preference accuracy",
        "weights": grid.tolist(),
        "points": points.tolist(),
        "margins": np.array(mean_margins).tolist(),
        "logprob_shift": shifts,
        "hypervolume": hypervolume(points, ref),
        "reference_point": ref.tolist(),
        "base_point": [0.5] * len(data.objectives),
        "pairs": data.counts(),
        "beta": beta,
    } | ({"pair_margins": pair_margins, "pair_objective": data.objective.tolist()} if keep_pairs else {})


def generation_front(
    generate_at: Callable[[np.ndarray], list[str]],
    prompts,
    grid,
    scorers: dict[str, Callable[[object, str], float]],
    reference_point=None,
) -> dict:
    """Mean score per objective of the responses generated at each w.

    ``generate_at(w)`` returns one response per prompt; ``scorers`` maps an
    objective's name to ``f(prompt, response) -> float`` (higher is better).
    """
    grid = np.asarray(grid, dtype=np.float64)
    points, samples = [], []
    for w in grid:
        responses = generate_at(w)
        points.append([float(np.mean([f(p, r) for p, r in zip(prompts, responses)])) for f in scorers.values()])
        samples.append(responses)
    points = np.array(points)
    ref = np.zeros(len(scorers)) if reference_point is None else np.asarray(reference_point, float)
    return {
        "objectives": list(scorers),
        "metric": "mean score",
        "weights": grid.tolist(),
        "points": points.tolist(),
        "hypervolume": hypervolume(points, ref),
        "reference_point": ref.tolist(),
        "samples": samples,
    }
