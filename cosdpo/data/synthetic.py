"""A seeded generator of MSLR-shaped data, the default for the demo and tests.

Each document has a relevance latent r (shifted per query) and two
"taste" latents u, v. The label is a skewed 0..4 grade of r. Auxiliary
objective k (features 132..136) grows with r + c * (cos t_k u + sin t_k v)
with directions t_k = k * 144 degrees, so consecutive objectives (quality1
and quality2, ...) pull in nearly opposite directions of (u, v): every
objective likes relevant documents, but they disagree about which ones,
and the front between them is a real curve. Features 1..131 are noisy mixes
of the latents in MSLR's mixed scales (counts, ratios, huge values, query
level), so a model has to normalise its inputs to learn anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from .letor import FOLD_FILES
from .objectives import MSLR_N_FEATURES

N_INPUTS = 131
LABEL_SHARES = (0.52, 0.30, 0.12, 0.04, 0.02)
# list lengths: the demo's short lists, or MSLR-WEB30K's shape (1 to 1,251 documents a query, mean about 120)
LENGTHS = {
    "short": dict(mean_size=24, max_size=120, min_size=4, spread=0.6),
    "mslr": dict(mean_size=95, max_size=1251, min_size=1, spread=0.75),
}


def generate(
    n_queries: int = 1000,
    seed: int = 0,
    mean_size: int = 24,
    max_size: int = 120,
    conflict: float = 1.5,
    noise: float = 1.0,
    min_size: int = 4,
    spread: float = 0.6,
):
    """Return (X (n, 136), labels (n,), qid (n,)) as numpy arrays.

    ``noise`` scales the noise of the input features: lower makes the
    latents easier to read (tiny test sets learn in a few steps).
    """
    if n_queries < 3:
        raise ValueError(f"need at least 3 queries, got {n_queries}")
    rng = np.random.default_rng(seed)
    sizes = np.clip(np.rint(rng.lognormal(np.log(mean_size), spread, n_queries)), min_size, max_size).astype(int)
    qid = np.repeat(np.arange(1, n_queries + 1), sizes)
    n = len(qid)
    q_shift = rng.normal(0.0, 0.5, n_queries)[qid - 1]
    r = q_shift + rng.normal(0.0, 1.0, n)
    u, v = rng.normal(0.0, 1.0, (2, n))

    noisy = r + rng.normal(0.0, 0.5, n)
    cuts = np.quantile(noisy, np.cumsum(LABEL_SHARES)[:-1])
    labels = np.searchsorted(cuts, noisy).astype(np.float64)

    latents = np.stack([r, u, v, q_shift], axis=1)
    weights = rng.normal(0.0, 1.0, (N_INPUTS, 4)) * (rng.random((N_INPUTS, 4)) < 0.5)
    weights[np.arange(N_INPUTS), np.arange(N_INPUTS) % 3] += 1.0  # every feature sees r, u or v
    base = latents @ weights.T + noise * rng.normal(0.0, 1.0, (n, N_INPUTS)) * rng.uniform(0.5, 2.0, N_INPUTS)
    feats = np.empty_like(base)
    family = np.arange(N_INPUTS) % 5
    feats[:, family == 0] = np.floor(np.exp(np.clip(base[:, family == 0], -5, 12) / 2))  # term counts
    feats[:, family == 1] = np.round(1 / (1 + np.exp(-base[:, family == 1])), 6)  # ratios
    feats[:, family == 2] = np.round(np.exp(np.clip(base[:, family == 2], -5, 8)) * 1000)  # huge values
    feats[:, family == 3] = np.round(5 * base[:, family == 3] + 20, 4)  # BM25-like
    q_level = rng.normal(0.0, 1.0, (n_queries, int((family == 4).sum())))[qid - 1]
    feats[:, family == 4] = np.round(q_level + base[:, family == 4] * 0.1, 4)  # mostly query-level

    aux = []
    for k in range(5):
        t = np.deg2rad(144.0 * k)
        a = r + conflict * (np.cos(t) * u + np.sin(t) * v) + rng.normal(0.0, 0.3, n)
        aux.append((a - a.mean()) / a.std())
    z1, z2, z3, z4, z5 = aux
    quality1 = np.clip(np.rint(np.exp(1.8 + 1.0 * z1)), 1, 254)
    quality2 = np.clip(np.rint(np.exp(1.8 + 1.0 * z2)), 1, 254)
    query_url_clicks = rng.poisson(np.exp(1.5 * z3 - 1.0))
    url_clicks = rng.poisson(np.exp(2.0 * z4 - 0.5))
    dwell = np.where(z5 > -0.3, np.round(np.exp(1.2 * z5 + 2.0) * rng.gamma(4.0, 0.25, n), 2), 0.0)
    X = np.concatenate([feats, np.stack([quality1, quality2, query_url_clicks, url_clicks, dwell], axis=1)], axis=1)
    assert X.shape[1] == MSLR_N_FEATURES
    return X, labels, qid


def write_letor(path, X, labels, qid):
    """Write rows in LETOR text form: ``label qid:Q 1:v ... F:v`` (whole or not at all)."""
    fmt = "%d qid:%d " + " ".join(f"{j}:%.6g" for j in range(1, X.shape[1] + 1))
    rows = np.concatenate([labels[:, None], qid[:, None], X], axis=1)
    with atomic_file(path) as f:
        np.savetxt(f, rows, fmt=fmt)


def write_fold(out_dir, n_queries: int = 1000, seed: int = 0, overwrite: bool = False, **kwargs) -> Path:
    """Write a Fold-style directory (train/vali/test split 60/20/20 by query).

    Refuses a folder that already holds a fold file unless ``overwrite``: pointed by mistake at a real
    MSLR Fold, it would replace the user's data with synthetic rows."""
    out = Path(out_dir)
    held = [name for name in FOLD_FILES.values() if (out / name).exists()]
    if held and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(held)}: pass --overwrite to replace them, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    X, labels, qid = generate(n_queries, seed, **kwargs)
    perm = np.random.default_rng(seed + 1).permutation(np.arange(1, n_queries + 1))
    n_train, n_vali = int(0.6 * n_queries), int(0.2 * n_queries)
    parts = dict(zip(FOLD_FILES, np.split(perm, [n_train, n_train + n_vali])))
    for split, queries in parts.items():
        rows = np.isin(qid, queries)
        write_letor(out / FOLD_FILES[split], X[rows], labels[rows], qid[rows])
    return out
