import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from cosdpo.evaluation.metrics import hypervolume, mean_ndcg, ndcg_per_group
from cosdpo.simplex import check_simplex, dirichlet_standardiser, weight_grid


def test_ndcg_matches_sklearn_with_padding():
    rng = np.random.default_rng(0)
    B, N = 40, 30
    sizes = rng.integers(2, N + 1, B)
    mask = np.arange(N)[None] < sizes[:, None]
    scores = rng.normal(size=(B, N))  # continuous: no ties
    labels = rng.integers(0, 5, (B, N)).astype(float)
    labels[0] = 0  # a group with no relevant item
    for k in (1, 3, 10, 50):
        got = ndcg_per_group(np.where(mask, scores, 99.0), np.where(mask, labels, 4), mask, k)
        for b in range(B):
            m = mask[b]
            if labels[b][m].max() == 0:
                assert np.isnan(got[b])
                continue
            want = ndcg_score([2 ** labels[b][m] - 1], [scores[b][m]], k=k)
            assert got[b] == pytest.approx(want, abs=1e-12)


def test_empty_group_conventions():
    per = np.array([0.5, np.nan, 1.0])
    assert mean_ndcg(per, "skip") == pytest.approx(0.75)
    assert mean_ndcg(per, "zero") == pytest.approx(0.5)
    assert mean_ndcg(per, "one") == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError):
        mean_ndcg(per, "drop")


def _brute_hv(points, ref):
    """Exact hypervolume by summing the dominated cells of the coordinate grid."""
    points = np.asarray(points)
    axes = [np.unique(np.concatenate([[ref[d]], points[:, d]])) for d in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        upper = np.array([axes[d][i + 1] for d, i in enumerate(cell)])
        if np.any(np.all(points >= upper, axis=1)):
            total += np.prod([axes[d][i + 1] - axes[d][i] for d, i in enumerate(cell)])
    return total


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_hypervolume_matches_brute_force(dim):
    rng = np.random.default_rng(dim)
    pts = rng.random((12, dim))
    assert hypervolume(pts) == pytest.approx(_brute_hv(pts, np.zeros(dim)), rel=1e-12)
    ref = np.full(dim, 0.3)
    assert hypervolume(pts, ref) == pytest.approx(_brute_hv(pts[np.all(pts > ref, 1)], ref), rel=1e-12)


def test_hypervolume_of_a_known_set():
    # two boxes [0,1]x[0,3] and [0,2]x[0,2] overlap in [0,1]x[0,2]: 3 + 4 - 2 = 5
    assert hypervolume([[1, 3], [2, 2]]) == pytest.approx(5.0)
    assert hypervolume([[-1, 3]]) == 0.0


def test_weight_grids():
    g = weight_grid(2)
    assert g.shape == (11, 2) and np.allclose(g.sum(1), 1) and np.allclose(g[:, 0], np.linspace(1, 0, 11))
    lat = weight_grid(5, 50)
    assert len(lat) == math.comb(3 + 4, 4) and np.allclose(lat.sum(1), 1)  # H=3: 35 points
    assert np.allclose(np.sort(lat * 3, axis=None) % 1, 0)
    d1, d2 = weight_grid(3, 12, "dirichlet", 7), weight_grid(3, 12, "dirichlet", 7)
    assert np.array_equal(d1, d2) and len(d1) == 12 and np.allclose(d1.sum(1), 1)
    assert np.allclose(d1[:3], np.eye(3))
    with pytest.raises(ValueError):
        weight_grid(3, 2)


def test_check_simplex():
    assert np.allclose(check_simplex([0.3, 0.7], 2), [0.3, 0.7])
    for bad in ([0.5, 0.6], [-0.1, 1.1], [np.nan, 1.0]):
        with pytest.raises(ValueError, match="simplex"):
            check_simplex(bad)
    with pytest.raises(ValueError, match="2 objectives"):
        check_simplex([0.2, 0.3, 0.5], 2)


@pytest.mark.parametrize("k,alpha", [(2, 0.3), (2, 1.0), (3, 0.1), (5, 0.3)])
def test_dirichlet_standardiser_against_samples(k, alpha):
    w = np.random.default_rng(0).dirichlet(np.full(k, alpha), size=200_000)
    center, scale = dirichlet_standardiser(k, alpha)
    z = (w - center) * scale
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(z.std(0), 1.0, atol=0.01)
