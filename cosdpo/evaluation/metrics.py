"""Ranking metrics and hypervolume.

NDCG@k uses gain 2^rel - 1 and a log2 discount, with the ideal DCG taken from
the labels. A group with no relevant item (ideal DCG = 0) has no defined
NDCG; ``empty`` chooses what it counts as: ``"skip"`` (the default) leaves it
out of the mean, because an auxiliary objective such as clicks is silent on
most queries and counting those as 0 or 1 would only dilute the front;
``"zero"`` is scikit-learn's convention and ``"one"`` LightGBM's.
"""

from __future__ import annotations

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


def hypervolume(points, reference=None) -> float:
    """Hypervolume of a set of points under maximisation (moocore).

    Points that do not dominate the reference point add nothing.
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    ref = np.zeros(points.shape[1]) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != (points.shape[1],) or not np.all(np.isfinite(ref)):
        raise ValueError(f"the reference point must be {points.shape[1]} finite numbers, got {ref.tolist()}")
    keep = np.all(points > ref, axis=1)
    if not keep.any():
        return 0.0
    return float(moocore.hypervolume(points[keep], ref=ref, maximise=True))
