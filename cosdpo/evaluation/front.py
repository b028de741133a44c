"""Scoring a dataset and measuring a conditioned ranker's Pareto front.

The base model's scores do not depend on w, so they are computed once and
fed to the conditioned model for every weight vector of the grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..data.groups import RankingSet
from ..models.ranker import ConditionedRanker, load_ranker
from ..simplex import weight_grid
from .metrics import hypervolume, mean_ndcg, ndcg_per_group
from .plot import plot_fronts
from .processes import gather_shares, my_share


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_base(model, data: RankingSet, max_items: int = 16384, accelerator=None) -> np.ndarray:
    """Scores of an unconditioned ranker for every item (flat, in data order).

    ``accelerator``: split the batches over its processes (each scores 1/N; all end with every score).
    """
    model.eval()
    out = np.zeros(len(data.main), dtype=np.float32)
    for groups in my_share(data.eval_batches(max_items), accelerator):
        b = data.batch(groups, _device(model))
        s = model(b["x"], b["mask"])
        out[_flat_index(data, groups)] = s[b["mask"]].float().cpu().numpy()
    return gather_shares(out, accelerator)


@torch.no_grad()
def score_conditioned(
    model,
    data: RankingSet,
    weights,
    base: np.ndarray | None = None,
    max_items: int = 16384,
    beta_prime=None,
    accelerator=None,
) -> np.ndarray:
    """Scores (M, n_items) of a conditioned ranker under each of M weight vectors.

    ``beta_prime``: serving temperature (a number, or a K-vector for tcos models).
    ``accelerator``: split the batches over its processes, as ``score_base`` does.
    """
    model.check_beta(beta_prime)
    model.eval()
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float32))
    base = score_base(model.base, data, max_items, accelerator) if base is None else base
    out = np.zeros((len(weights), len(data.main)), dtype=np.float32)
    dev = _device(model)
    M, w_all = len(weights), torch.from_numpy(weights).to(dev)
    # all M weight vectors in one forward: the batch repeated M times, so the
    # matmuls are M times larger (much better use of the cores than M calls)
    for groups in my_share(data.eval_batches(max(max_items // M, 1)), accelerator):
        b = data.batch(groups, dev)
        flat = _flat_index(data, groups)
        ref = torch.zeros_like(b["main"])
        ref[b["mask"]] = torch.from_numpy(base[flat]).to(dev)
        B = len(groups)
        s = model(
            b["x"].repeat(M, 1, 1),
            b["mask"].repeat(M, 1),
            w_all.repeat_interleave(B, dim=0),
            base_scores=ref.repeat(M, 1),
            beta=beta_prime,
        )
        out[:, flat] = s.view(M, B, -1)[:, b["mask"]].float().cpu().numpy()
    return gather_shares(out, accelerator)


def _flat_index(data: RankingSet, groups) -> np.ndarray:
    """Item indices of ``groups`` in the row-major order of their mask."""
    idx, mask = data.item_index(groups)
    return idx[mask]


def ndcg_report(data: RankingSet, scores: np.ndarray, k: int = 10, empty: str = "skip") -> dict:
    """Mean NDCG@k of the main label and of every auxiliary objective."""
    s, mask = data.pad(scores)
    main, _ = data.pad(data.main)
    aux, _ = data.pad(data.aux)
    return {
        "main": mean_ndcg(ndcg_per_group(s, main, mask, k), empty),
        "aux": [mean_ndcg(ndcg_per_group(s, aux[..., j], mask, k), empty) for j in range(aux.shape[-1])],
    }


def ranker_front(
    model,
    data: RankingSet,
    grid=None,
    k: int = 10,
    reference=None,
    empty: str = "skip",
    max_items: int = 16384,
    beta_prime=None,
    base: np.ndarray | None = None,
    accelerator=None,
) -> dict:
    """The front of a conditioned ranker on ``data``: everything ``front.json`` holds.

    ``base``: the base model's scores on ``data``, if already computed; ``accelerator``: score
    across its processes.
    """
    grid = weight_grid(model.n_objectives) if grid is None else np.asarray(grid, dtype=np.float64)
    base = score_base(model.base, data, max_items, accelerator) if base is None else base
    scores = score_conditioned(model, data, grid, base, max_items, beta_prime, accelerator)
    return front_from_scores(data, grid, scores, base, model.schema.objective_names, k, reference, empty) | {
        "method": model.method,
        "beta_prime": model.beta if beta_prime is None else np.asarray(beta_prime, dtype=float).tolist(),
    }


def front_from_scores(
    data: RankingSet,
    grid,
    scores: np.ndarray,
    base: np.ndarray,
    objectives,
    k: int = 10,
    reference=None,
    empty: str = "skip",
) -> dict:
    """A front from the scores (M, n_items) that some method gives under each of M weights."""
    grid = np.asarray(grid, dtype=np.float64)
    K = len(objectives)
    ref_point = np.zeros(K) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref_point.shape != (K,):
        raise ValueError(f"the reference point needs {K} values, got {ref_point.tolist()}")
    base_rep = ndcg_report(data, base, k, empty)
    reports = [ndcg_report(data, s, k, empty) for s in scores]
    points = np.array([r["aux"] for r in reports])
    mains = np.array([r["main"] for r in reports])
    return {
        "objectives": list(objectives),
        "k": k,
        "empty_groups": empty,
        "n_queries": len(data),
        "weights": grid.tolist(),
        "points": points.tolist(),
        "hypervolume": hypervolume(points, ref_point),
        "reference_point": ref_point.tolist(),
        "main_ndcg": {"mean": float(mains.mean()), "std": float(mains.std()), "values": mains.tolist()},
        "base_point": base_rep["aux"],
        "base_main_ndcg": base_rep["main"],
        "base_hypervolume": hypervolume([base_rep["aux"]], ref_point),
    }


def front_job(
    model_dir,
    data,
    out,
    split: str = "test",
    grid: int | None = None,
    grid_kind: str = "lattice",
    k: int = 10,
    reference=None,
    empty: str = "skip",
    split_seed: int = 0,
    beta_prime=None,
) -> dict:
    """Load a conditioned ranker, measure its front on a split, write front.json and front.png."""
    if reference is not None and not np.all(np.isfinite(np.asarray(reference, dtype=float))):
        raise ValueError(f"the reference point must be finite numbers, got {list(reference)}")
    model = load_ranker(model_dir)
    if not isinstance(model, ConditionedRanker):
        raise ValueError(f"{model_dir} holds a {model.kind} ranker; a front needs a fine-tuned (conditioned) one")
    model.check_beta(beta_prime)  # before any data is read
    weights = weight_grid(model.n_objectives, grid, grid_kind, split_seed)
    test = RankingSet.load(data, split, model.schema, split_seed)
    front = ranker_front(model, test, weights, k, reference, empty, beta_prime=beta_prime) | {
        "model": str(model_dir),
        "data": str(data),
        "split": split,
    }
    out = Path(out)
    write_json(out / "front.json", front)
    label = {"wcos": "Weight-COS-DPO", "tcos": "Temperature-COS-DPO"}[model.method]
    plot_fronts(
        {f"{label}, beta'={front['beta_prime']}": front},
        out / "front.png",
        title=f"Pareto front on {Path(str(data)).name} ({split}), HV {front['hypervolume']:.4g}",
    )
    return front
