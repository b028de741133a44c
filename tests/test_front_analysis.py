"""The paired and length analyses of an LLM front (cosdpo.evaluation.front_analysis).

They decide how docs/results/hh-rlhf.md reads the front, so each is checked
on a hand-made front whose answer is known by construction.
"""

import json

import numpy as np
import pytest
from scipy import stats

from cosdpo.evaluation import front_analysis as hh_front


def _front(margins_by_w, objective):
    return {
        "objectives": ["helpful", "harmless"],
        "weights": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
        "pair_margins": margins_by_w,
        "pair_objective": objective,
    }


def test_length_split_tells_a_length_only_corner_from_one_that_learned_the_objective():
    # Harmless pairs 0-3 chosen longer, 4-7 chosen shorter; pairs 8-9 are helpful.
    gap = np.array([5, 3, 2, 1, -1, -2, -4, -6, 7, -7])
    objective = [1] * 8 + [0] * 2
    shorter_wins = list(-np.sign(gap) * 0.1)  # the harmless corner ranks by length alone
    learned = [0.1] * 10  # the helpful corner is right on every pair
    front = _front([learned, [0.0] * 10, shorter_wins], objective)
    got = hh_front.length_split(front, gap)
    assert got["harmless"]["pairs"] == (4, 4)
    assert got["harmless"]["own"] == (0.0, 1.0)
    assert got["harmless"]["other"] == (1.0, 1.0)
    assert got["helpful"]["own"] == (1.0, 1.0) and got["helpful"]["pairs"] == (1, 1)
    # Length alone: chosen longer on half of each objective's pairs.
    assert hh_front.longer_wins(gap, np.array(objective), ["helpful", "harmless"]) == {"helpful": 0.5, "harmless": 0.5}


def test_length_balanced_accuracy_gives_a_length_rule_one_half_however_the_pairs_lean():
    # Harmless pairs: 6 chosen longer, 2 chosen shorter, so "longer wins" has plain accuracy 0.75.
    gap = np.array([5, 3, 2, 1, 4, 6, -1, -2, 7, -7])
    objective = [1] * 8 + [0] * 2
    longer_wins = list(np.sign(gap) * 0.1)
    learned = [0.1] * 10
    half = [0.1] * 6 + [-0.1] + [0.1] + [0.1, -0.1]  # harmless: 1.0 on longer, 0.5 on shorter
    front = _front([longer_wins, learned, half], objective)
    got = hh_front.length_balanced(front, gap)
    assert np.mean(np.array(longer_wins)[:8] > 0) == 0.75  # what plain accuracy would credit it with
    np.testing.assert_allclose(got, [[0.5, 0.5], [1.0, 1.0], [0.5, 0.75]])


def test_longer_wins_counts_ties_as_half():
    gap, objective = np.array([1, 0, -1, 0]), np.array([0, 0, 1, 1])
    assert hh_front.longer_wins(gap, objective, ["a", "b"]) == {"a": 0.75, "b": 0.25}


def test_corner_test_counts_discordant_pairs_and_matches_scipy():
    rng = np.random.default_rng(0)
    objective = np.array([0] * 30 + [1] * 30)
    helpful_corner, harmless_corner = rng.normal(size=60), rng.normal(size=60)
    front = _front([helpful_corner.tolist(), [0.0] * 60, harmless_corner.tolist()], objective.tolist())
    got = hh_front.corner_test(front)
    for k, name, own, other in (
        (0, "helpful", helpful_corner, harmless_corner),
        (1, "harmless", harmless_corner, helpful_corner),
    ):
        o, t = own[objective == k], other[objective == k]
        n_own = sum(1 for a, b in zip(o, t) if a > 0 >= b)
        n_other = sum(1 for a, b in zip(o, t) if b > 0 >= a)
        assert got[name][:2] == (n_own, n_other)
        assert got[name][2] == pytest.approx(stats.binomtest(n_own, n_own + n_other).pvalue)
        assert got[name][3] == pytest.approx(stats.wilcoxon(o - t).pvalue)


def test_corner_test_of_a_model_that_ignores_w_finds_nothing():
    """A --fixed-weights run scores every w alike; on all-zero differences scipy's Wilcoxon gives nan."""
    margins = np.random.default_rng(2).normal(size=40).tolist()
    front = _front([margins, margins, margins], [0] * 20 + [1] * 20)
    assert hh_front.corner_test(front) == {"helpful": (0, 0, 1.0, 1.0), "harmless": (0, 0, 1.0, 1.0)}


def test_seed_summary_means_and_slopes_match_numpy_and_scipy():
    rng = np.random.default_rng(1)
    weights = [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0.0, 1.0]]
    fronts = [
        {
            "objectives": ["helpful", "harmless"],
            "weights": weights,
            "points": rng.uniform(0.4, 0.7, (5, 2)).tolist(),
            "margins": rng.normal(0, 0.1, (5, 2)).tolist(),
        }
        for _ in range(3)
    ]
    got = hh_front.seed_summary(fronts)
    points = np.array([f["points"] for f in fronts])
    np.testing.assert_allclose(got["mean"], points.mean(0))
    np.testing.assert_allclose(got["std"], points.std(0, ddof=1))
    w = np.array(weights)
    for r, f in enumerate(fronts):
        for k in range(2):
            assert got["slopes"][r][k] == pytest.approx(stats.linregress(w[:, k], np.array(f["points"])[:, k]).slope)
            assert got["margin_slopes"][r][k] == pytest.approx(
                stats.linregress(w[:, k], np.array(f["margins"])[:, k]).slope
            )
    # A front that rises with its own weight has a positive slope on both objectives.
    rising = {
        "objectives": ["a", "b"],
        "weights": weights,
        "points": [[0.5 + 0.1 * a, 0.5 + 0.1 * b] for a, b in weights],
        "margins": [[a, b] for a, b in weights],
    }
    assert np.all(np.array(hh_front.seed_summary([rising])["slopes"]) > 0)
    # The length-balanced mean only when every run has it (runs made before it was written have not).
    assert got["mean_length_balanced"] is None
    balanced = [dict(f, length_balanced=rng.uniform(0.4, 0.7, (5, 2)).tolist()) for f in fronts]
    np.testing.assert_allclose(
        hh_front.seed_summary(balanced)["mean_length_balanced"], np.mean([f["length_balanced"] for f in balanced], 0)
    )
    assert hh_front.seed_summary(balanced[:2] + fronts[2:])["mean_length_balanced"] is None


def test_seed_summary_refuses_fronts_over_different_weights():
    a = {
        "objectives": ["x", "y"],
        "weights": [[1.0, 0.0], [0.0, 1.0]],
        "points": [[0.5, 0.5]] * 2,
        "margins": [[0.0, 0.0]] * 2,
    }
    b = dict(a, weights=[[0.9, 0.1], [0.0, 1.0]])
    with pytest.raises(ValueError, match="front 2 is over other objectives or weights"):
        hh_front.seed_summary([a, b])


def test_summarize_names_a_file_that_is_not_a_front(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text('{"objectives": ["a", "b"], "weights": [[1, 0], [0, 1]]}')
    with pytest.raises(ValueError, match=r"metrics.json: not a front.json \(no points, margins\)"):
        hh_front.read_front(bad)
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        hh_front.read_front(tmp_path / "missing.json")


def test_mean_front_averages_the_runs_and_its_hypervolume_is_the_staircase_area(tmp_path):
    weights = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    a = {
        "objectives": ["x", "y"],
        "weights": weights,
        "points": [[0.7, 0.4], [0.6, 0.5], [0.4, 0.6]],
        "margins": [[0.0, 0.0]] * 3,
        "reference_point": [0.3, 0.3],
    }
    b = dict(a, points=[[0.5, 0.4], [0.6, 0.7], [0.4, 0.4]])
    got = hh_front.mean_front([a, b], ["s0", "s1"], hh_front.seed_summary([a, b]))
    assert list(got) == ["s0", "s1", "mean of 2"]
    mean = got["mean of 2"]
    np.testing.assert_allclose(mean["points"], [[0.6, 0.4], [0.6, 0.6], [0.4, 0.5]])
    # By hand above (0.3, 0.3): (0.6, 0.6) dominates the other two, so the area is 0.3 x 0.3.
    assert mean["hypervolume"] == pytest.approx(0.09)
    assert got["s0"]["hypervolume"] == pytest.approx(0.4 * 0.1 + 0.3 * 0.1 + 0.1 * 0.1)  # staircase of a, by hand
    for p, f in (("a.json", a), ("b.json", b)):
        (tmp_path / p).write_text(json.dumps(f))
    assert hh_front.read_front(tmp_path / "a.json") == a


def test_order_breaks_finds_each_step_against_the_weight_and_counts_its_pairs():
    weights = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    # Helpful (pairs 0-3) falls as its weight falls: no break. Harmless (pairs 4-7): right on 2 at
    # (1, 0), on 3 at (0.5, 0.5), on 2 at (0, 1): raising its weight from 0.5 to 1 loses pair 6.
    margins = [[1, 1, 1, 1, 1, 1, -1, -1], [1, 1, 1, -1, 1, 1, 1, -1], [1, -1, -1, -1, 1, 1, -1, -1]]
    front = {
        "objectives": ["helpful", "harmless"],
        "weights": weights,
        "pair_margins": margins,
        "pair_objective": [0] * 4 + [1] * 4,
        "points": [[1.0, 0.5], [0.75, 0.75], [0.25, 0.5]],
    }
    got = hh_front.order_breaks(front)
    assert got["helpful"] == []
    ((lo, hi, drop, lost, won, p),) = got["harmless"]
    assert (lo, hi, lost, won) == (0.5, 1.0, 1, 0) and drop == pytest.approx(-0.25)
    assert p == pytest.approx(stats.binomtest(1, 1).pvalue)
    # Without per-pair margins only the steps are reported; a tie is not a break.
    tied = {k: v for k, v in front.items() if k not in ("pair_margins", "pair_objective")}
    tied["points"] = [[1.0, 0.5], [0.75, 0.5], [0.75, 0.25]]
    assert hh_front.order_breaks(tied) == {"helpful": [], "harmless": [(0.5, 1.0, -0.25)]}
