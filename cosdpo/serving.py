"""Scoring a candidate list under a chosen trade-off, after training."""

from __future__ import annotations

import numpy as np
import torch

from .models.ranker import BaseRanker, ConditionedRanker
from .simplex import check_simplex


def _inputs(model, items) -> torch.Tensor:
    X = np.asarray(items, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"items must be a 2-D array (n_items, n_features), got shape {X.shape}")
    schema = model.schema
    if X.shape[1] == schema.n_features:
        X = X[:, np.asarray(schema.inputs) - 1]
    elif X.shape[1] != len(schema.inputs):
        raise ValueError(
            f"items have {X.shape[1]} features; the model takes either the full LETOR row "
            f"({schema.n_features}) or its {len(schema.inputs)} input features"
        )
    if X.shape[0] == 0:
        raise ValueError("items is empty: give at least one candidate")
    if not np.all(np.isfinite(X)):
        i, j = np.argwhere(~np.isfinite(X))[0]
        raise ValueError(f"item {i} has a NaN or infinite feature (column {j}): one would make every score NaN")
    return torch.from_numpy(np.ascontiguousarray(X))[None]


@torch.no_grad()
def score_items(model, items, w=None, beta_prime=None) -> np.ndarray:
    """Scores of one candidate list: ``items`` is (n_items, n_features).

    For a conditioned model ``w`` is the trade-off (K weights on the
    simplex) and ``beta_prime`` the temperature to serve: a number beta' for a
    Weight-COS model (s_base + (beta / beta') (s - s_base): larger stays
    closer to the base), or one per objective for a Temperature-COS model.
    A base model takes neither.
    """
    x = _inputs(model, items)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    model.eval()
    if isinstance(model, BaseRanker):
        if w is not None or beta_prime is not None:
            raise ValueError("a base ranker is not conditioned: pass no weights or temperature")
        return model(x, mask)[0].numpy()
    if not isinstance(model, ConditionedRanker):
        raise TypeError(f"cannot score with a {type(model).__name__}")
    if w is None:
        raise ValueError(f"a conditioned ranker needs weights for its objectives {model.schema.objective_names}")
    w = torch.from_numpy(check_simplex(w, model.n_objectives).astype(np.float32))
    return model(x, mask, w, beta=beta_prime)[0].numpy()


def rank_items(model, items, w=None, beta_prime=None) -> np.ndarray:
    """Item indices, best first."""
    return np.argsort(-score_items(model, items, w, beta_prime), kind="stable")
