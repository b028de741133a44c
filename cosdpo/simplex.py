"""The probability simplex: checks, evaluation grids, Dirichlet draws and standardisation.

Every layer needs these (models standardise w, training draws it, evaluation
builds grids, serving checks it), so they live in this leaf module, which
imports nothing else of the package.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

GRID_KINDS = ("lattice", "dirichlet")


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
    if kind not in GRID_KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; choose {' or '.join(GRID_KINDS)}")
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
    raise ValueError(f"unknown grid kind {kind!r}; choose {' or '.join(GRID_KINDS)}")


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


def draw_weights(seed: int, step: int, alpha: float, k: int) -> torch.Tensor:
    """w ~ Dir(alpha) for one step; it depends only on (seed, step), so every process
    and every resumed run draws the same w."""
    return torch.tensor(np.random.default_rng([seed, step]).dirichlet(np.full(k, alpha)), dtype=torch.float32)
