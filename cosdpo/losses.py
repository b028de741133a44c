"""Losses as plain functions on padded batches (allRank style).

Every function takes ``scores`` of shape (B, N), a boolean ``mask`` of the
same shape (True = real item) and labels of the same shape. Padded items are
ignored exactly: they receive zero probability mass and zero gradient, so
padding a batch changes nothing.

With ``reduction="none"`` a loss returns ``(per_group, valid)``: the loss of
each group and whether that group carries a preference at all. Groups
without one (all labels equal, or all zero under ``l1``) contribute nothing.
The trainer needs the sums and counts separately so that the loss of a batch
does not depend on how it is split across processes; ``"mean"`` (the default)
averages over valid groups and returns 0, not NaN, when there are none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRANSFORMS = ("softmax", "l1")


def _masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # finfo.min rather than -inf: a fully padded row stays finite (uniform)
    # instead of turning into NaN, and padded items still get exp(.) == 0.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.log_softmax(filled, dim=-1).masked_fill(~mask, 0.0)


def label_transform(labels: torch.Tensor, mask: torch.Tensor, transform: str = "softmax"):
    """T(psi): turn a label vector into a target distribution over the items.

    Returns ``(targets, valid)``; ``valid`` is False for groups whose labels
    express no preference, whose targets are then all zero.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown label transform {transform!r}; choose one of {TRANSFORMS}")
    labels = labels.to(torch.float32) if not labels.is_floating_point() else labels
    big = torch.finfo(labels.dtype).max
    lo = labels.masked_fill(~mask, big).amin(dim=-1)
    hi = labels.masked_fill(~mask, -big).amax(dim=-1)
    n_items = mask.sum(dim=-1)
    valid = (hi > lo) & (n_items >= 2)
    if transform == "softmax":
        targets = torch.softmax(labels.masked_fill(~mask, torch.finfo(labels.dtype).min), dim=-1)
    else:
        if bool(((labels < 0) & mask).any()):
            raise ValueError("the l1 label transform needs non-negative labels")
        pos = labels.masked_fill(~mask, 0.0)
        total = pos.sum(dim=-1, keepdim=True)
        valid = valid & (total.squeeze(-1) > 0)
        targets = pos / total.clamp_min(torch.finfo(labels.dtype).tiny)
    targets = torch.where(valid.unsqueeze(-1) & mask, targets, torch.zeros_like(targets))
    return targets, valid


def _reduce(per_group: torch.Tensor, valid: torch.Tensor, reduction: str):
    per_group = torch.where(valid, per_group, torch.zeros_like(per_group))
    if reduction == "none":
        return per_group, valid
    if reduction == "sum":
        return per_group.sum()
    if reduction == "mean":
        return per_group.sum() / valid.sum().clamp_min(1)
    raise ValueError(f"unknown reduction {reduction!r}")


def listwise_cross_entropy(logits, labels, mask, transform="softmax", reduction="mean"):
    """- sum_i T(psi)_i log softmax(logits)_i, the common core of ListNet and LiPO."""
    targets, valid = label_transform(labels, mask, transform)
    per_group = -(targets * _masked_log_softmax(logits, mask)).sum(dim=-1)
    return _reduce(per_group, valid, reduction)


def listnet(scores, labels, mask, transform="softmax", reduction="mean"):
    """ListNet: trains the base ranker on the main objective's labels."""
    return listwise_cross_entropy(scores, labels, mask, transform, reduction)


def lipo(scores, ref_scores, labels, mask, beta=1.0, transform="softmax", reduction="mean"):
    """LiPO (listwise DPO): ListNet on the implicit rewards beta * (s - s_base).

    ``beta`` is a float or a tensor broadcastable to (B, 1) (per-group
    temperatures, as Temperature-COS-DPO needs).
    """
    if isinstance(beta, (int, float)) and beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rewards = beta * (scores - ref_scores)
    return listwise_cross_entropy(rewards, labels, mask, transform, reduction)


def dpo(chosen, rejected, ref_chosen, ref_rejected, beta=1.0, reduction="mean"):
    """Pairwise DPO: - log sigmoid(beta * ((s_w - s_w^base) - (s_l - s_l^base)))."""
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    per_pair = -F.logsigmoid(beta * margin)
    return _reduce(per_pair, torch.ones_like(per_pair, dtype=torch.bool), reduction)


def weight_cos(losses: torch.Tensor, w: torch.Tensor, penalty: float = 0.0) -> torch.Tensor:
    """Weight-COS objective: sum_k w_k L_k - lambda * cos(w, L).

    The cosine term (COSMOS) pulls the loss vector toward the direction of w,
    which spreads the conditioned solutions along the front.
    """
    if losses.shape != w.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and w {tuple(w.shape)} differ in shape")
    total = (w * losses).sum()
    if penalty:
        total = total - penalty * F.cosine_similarity(w, losses, dim=0, eps=1e-8)
    return total


def response_window(response_mask: torch.Tensor) -> int:
    """How many last positions' logits ``sequence_logprobs`` needs: from the one before the batch's first
    response token to the end.

    Why: the LM head and its log-softmax over the vocabulary cost about a
    third of a small model's training step, and only the response tokens'
    log-probs are scored; prompts (long dialogues) need no logits.
    """
    rows = response_mask.any(dim=0).nonzero()
    first = int(rows[0]) if len(rows) else response_mask.shape[1] - 1
    return response_mask.shape[1] - max(first - 1, 0)


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) per sequence: the sum of the response tokens' log-probs.

    ``logits`` (B, L, V) predict token t+1 at position t, for the last L
    positions of the (B, T) tokens (L = T, or ``response_window``: the
    positions before those hold no response token); ``response_mask`` (B, T)
    marks the response tokens. This is the LLM's score s(x, y) that LiPO and
    DPO take.
    """
    offset = input_ids.shape[1] - logits.shape[1]
    if offset < 0 or bool(response_mask[:, : offset + 1].any()):
        raise ValueError(
            f"logits for the last {logits.shape[1]} of {input_ids.shape[1]} positions miss response "
            f"tokens (see response_window)"
        )
    # at least float32: summing a few hundred bf16 log-probs loses the margin DPO looks at
    logp = torch.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token = logp.gather(-1, input_ids[:, offset + 1 :, None]).squeeze(-1)
    return torch.where(response_mask[:, offset + 1 :], token, torch.zeros_like(token)).sum(dim=-1)


def pair_window(packed: dict) -> int:
    """How many last positions' logits ``pair_logprobs`` needs for pairs packed by ``pack_pairs``:
    from the earliest prompt end (whose logits predict both responses' first token) to the end."""
    return packed["input_ids"].shape[1] - int(packed["chosen_at"][:, 0].min())


def pair_logprobs(logits: torch.Tensor, packed: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen | x), log pi(rejected | x)) per row of pairs packed by ``data.tokenize.pack_pairs``.

    ``logits`` (B, L, V) cover the last L positions (``pair_window``). Each
    response token's log-prob is its logit less the position's logsumexp,
    gathered at the position that predicts it, so no (B, L, V) log-softmax
    is materialised.
    """
    offset = packed["input_ids"].shape[1] - logits.shape[1]
    if offset < 0 or int(packed["chosen_at"][:, 0].min()) < offset:
        raise ValueError(f"logits for the last {logits.shape[1]} positions miss response tokens (see pair_window)")
    # at least float32: summing a few hundred bf16 log-probs loses the margin DPO looks at
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    lse = torch.logsumexp(logits, dim=-1)
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    out = []
    for side in ("chosen", "rejected"):
        at, mask = (packed[f"{side}_at"] - offset).clamp_min(0), packed[f"{side}_mask"]
        token = logits[rows, at, packed[f"{side}_ids"]] - lse[rows, at]
        out.append(torch.where(mask, token, torch.zeros_like(token)).sum(dim=-1))
    return out[0], out[1]
