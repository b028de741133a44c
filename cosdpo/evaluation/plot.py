"""Pictures of fronts: the curve for K = 2, pairwise projections for K > 2.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so
writing a PNG neither needs a display nor switches the backend of the
process that imported cosdpo.
"""

from __future__ import annotations

import itertools

import numpy as np
from matplotlib.figure import Figure

from ..atomic import atomic_file


def new_figure(rows: int = 1, cols: int = 1, figsize=(6.4, 4.8)):
    """(figure, axes array of shape rows x cols) without pyplot's global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def draw_fronts(ax, fronts: dict[str, dict], i: int = 0, j: int = 1, annotate: bool = True):
    """Draw fronts (name -> front dict) projected on objectives i, j, with the base point.

    Every front dict needs ``objectives``, ``weights``, ``points`` and
    ``hypervolume``; the base point is taken from the first that has one,
    the axis name from its ``metric`` (default NDCG@10).
    """
    first = next(iter(fronts.values()))
    names, K = first["objectives"], len(first["objectives"])
    for label, front in fronts.items():
        pts = np.asarray(front["points"])
        order = np.argsort(np.asarray(front["weights"])[:, i]) if K == 2 else slice(None)
        ax.plot(
            pts[order, i],
            pts[order, j],
            "-o" if K == 2 else "o",
            ms=4,
            alpha=0.85,
            label=f"{label} (HV {front['hypervolume']:.4g})",
        )
        if K == 2 and annotate:
            for w, p in zip(front["weights"], pts):
                if w[0] in (0.0, 0.5, 1.0):
                    ax.annotate(f"w1={w[0]:.1f}", p, textcoords="offset points", xytext=(4, 4), fontsize=7)
    base = next((f["base_point"] for f in fronts.values() if f.get("base_point") is not None), None)
    if base is not None:
        ax.plot(base[i], base[j], "k*", ms=13, label="base model")
    metric = first.get("metric", "NDCG@10")
    ax.set_xlabel(f"{metric} {names[i]}")
    ax.set_ylabel(f"{metric} {names[j]}")
    ax.grid(alpha=0.3)


def save_figure(fig, path):
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=120)


def plot_fronts(fronts: dict[str, dict], path, title: str | None = None):
    """One picture of one or more fronts: K = 2 one panel, K > 2 every pair of objectives."""
    K = len(next(iter(fronts.values()))["objectives"])
    pairs = list(itertools.combinations(range(K), 2)) or [(0, 0)]
    cols = min(len(pairs), 3)
    rows = int(np.ceil(len(pairs) / cols))
    fig, axes = new_figure(rows, cols, figsize=(5.2 * cols, 4.4 * rows))
    for ax, (i, j) in zip(axes.flat, pairs):
        draw_fronts(ax, fronts, i, j)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle(title or ("Pareto front" if K == 2 else f"Pareto front, pairwise projections (K={K})"))
    save_figure(fig, path)
