"""Ranking metrics, weight grids and hypervolume.

NDCG@k uses gain 2^rel - 1 and a log2 discount, with the ideal DCG taken from
the labels. A group with no relevant item (ideal DCG = 0) has no defined
NDCG; ``empty`` chooses what it counts as: ``"skip"`` (the default) leaves it
out of the mean, because an auxiliary objective such as clicks is silent on
most queries and counting those as 0 or 1 would only dilute the front;
``"zero"`` is scikit-learn's convention and ``"one"`` LightGBM's.
"""

from __future__ import annotations

import itertools
import math

import moocore
import numpy as np

EMPTY_CHOICES = ("skip", "zero", "one")


def ndcg_per_group(scores, labels, mask, k: int = 10) -> np.ndarray:
    """NDCG@k of every group of a padded batch; NaN where the ideal DCG is 0.

    Ties in ``scores`` are broken by item position (stable sort), which is
    what a serving system that sorts its candidates does.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = scores.shape[1]
    kk = min(k, n)
    gains = np.where(mask, np.exp2(labels) - 1.0, 0.0)
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    order = np.argsort(np.where(mask, -scores, np.inf), axis=1, kind="stable")[:, :kk]
    dcg = (np.take_along_axis(gains, order, axis=1) * discount).sum(axis=1)
    ideal = -np.sort(-gains, axis=1)[:, :kk]
    idcg = (ideal * discount).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def mean_ndcg(per_group: np.ndarray, empty: str = "skip") -> float:
    if empty not in EMPTY_CHOICES:
        raise ValueError(f"empty must be one of {EMPTY_CHOICES}, got {empty!r}")
    if empty == "skip":
        vals = per_group[~np.isnan(per_group)]
        return float(vals.mean()) if vals.size else float("nan")
    fill = 0.0 if empty == "zero" else 1.0
    return float(np.where(np.isnan(per_group), fill, per_group).mean())


def simplex_lattice(k: int, divisions: int) -> np.ndarray:
    """All w with entries in {0, 1/H, ..., 1} summing to 1 (C(H+K-1, K-1) points)."""
    rows = [c for c in itertools.product(range(divisions + 1), repeat=k) if sum(c) == divisions]
    return np.array(sorted(rows, reverse=True), dtype=np.float64) / divisions


def weight_grid(k: int, n: int | None = None, kind: str = "lattice", seed: int = 0) -> np.ndarray:
    """The evaluation grid of weight vectors.

    K = 2: ``n`` evenly spaced points from (1, 0) to (0, 1) (11 by default).
    K > 2: ``kind="lattice"`` gives the simplex lattice with the most
    divisions that keeps at most ``n`` points (default 50, at least the K
    corners); ``kind="dirichlet"`` gives the K corners, the centre and
    ``n - K - 1`` seeded Dir(1) draws.
    """
    if k < 1:
        raise ValueError(f"need at least one objective, got K={k}")
    if k == 1:
        return np.ones((1, 1))
    if k == 2:
        n = 11 if n is None else n
        if n < 2:
            raise ValueError(f"a K=2 grid needs at least 2 points, got {n}")
        a = np.linspace(1.0, 0.0, n)
        return np.stack([a, 1.0 - a], axis=1)
    n = 50 if n is None else n
    if n < k:
        raise ValueError(f"a grid for K={k} needs at least {k} points (the corners), got {n}")
    if kind == "lattice":
        h = 1
        while math.comb(h + 1 + k - 1, k - 1) <= n:
            h += 1
        return simplex_lattice(k, h)
    if kind == "dirichlet":
        rng = np.random.default_rng(seed)
        extra = rng.dirichlet(np.ones(k), size=max(n - k - 1, 0))
        return np.concatenate([np.eye(k), np.full((1, k), 1.0 / k), extra])[:n]
    raise ValueError(f"unknown grid kind {kind!r}; choose lattice or dirichlet")


def dirichlet_standardiser(k: int, alpha: float) -> tuple[float, float]:
    """(center, scale) so that (w - center) * scale has mean 0 and std 1 per entry
    under Dir(alpha): a network fed raw w (std ~0.4 or less) learns to ignore it."""
    if k == 1:
        return 1.0, 1.0
    return 1.0 / k, math.sqrt((k * alpha + 1) / ((1 / k) * (1 - 1 / k)))


def check_simplex(w, k: int | None = None, atol: float = 1e-6) -> np.ndarray:
    """Validate a weight vector: K entries, non-negative, summing to 1."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 1:
        raise ValueError(f"a weight vector must be 1-D, got shape {w.shape}")
    if k is not None and w.shape[0] != k:
        raise ValueError(f"the weight vector has {w.shape[0]} entries but the model has {k} objectives")
    if not np.all(np.isfinite(w)) or np.any(w < -atol) or abs(w.sum() - 1.0) > atol:
        raise ValueError(f"weights {w.tolist()} are not on the simplex: they must be >= 0 and sum to 1")
    return np.clip(w, 0.0, None)


def hypervolume(points, reference=None) -> float:
    """Hypervolume of a set of points under maximisation (moocore).

    Points that do not dominate the reference point add nothing.
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    ref = np.zeros(points.shape[1]) if reference is None else np.asarray(reference, dtype=np.float64)
    keep = np.all(points > ref, axis=1)
    if not keep.any():
        return 0.0
    return float(moocore.hypervolume(points[keep], ref=ref, maximise=True))
