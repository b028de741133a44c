"""Reading an LLM preference front: against response length, corner against corner, step by step, over seeds.

DPO sums log-probs over response tokens, so response length is the first
thing a short run learns; these analyses tell a front that follows w from
one that follows length, and a step out of order from the noise of a small
held-out set. They need a front written with ``keep_pairs=True`` (every
pair's margin at every w).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.tokenize import PreferenceSet
from .metrics import hypervolume


def length_gaps(pairs: PreferenceSet) -> np.ndarray:
    """Per pair of a front (in its order): chosen minus rejected response tokens."""
    n = np.array([len(response) for _, response in pairs.sequences])
    return n[pairs.chosen] - n[pairs.rejected]


def longer_wins(gap: np.ndarray, objective: np.ndarray, objectives: list) -> dict:
    """Held-out accuracy per objective of "the longer response wins" (ties a half).

    What response length alone gives on the front's pairs: DPO sums
    log-probs over response tokens, so length is the first thing a short run
    can learn, and a front should be read against it.
    """
    return {
        o: float(np.mean((gap[objective == k] > 0) + 0.5 * (gap[objective == k] == 0)))
        for k, o in enumerate(objectives)
    }


def length_split(front: dict, gap: np.ndarray) -> dict:
    """Per objective k and per corner: accuracy on the pairs whose chosen response is longer, and
    on those whose chosen response is shorter.

    A corner that only learned "shorter wins" scores near 0 on the first and
    near 1 on the second; one that learned the objective is above 0.5 on both.
    """
    m, obj, w = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"]), np.asarray(front["weights"])
    out = {}
    for k, o in enumerate(front["objectives"]):
        longer, shorter = (obj == k) & (gap > 0), (obj == k) & (gap < 0)
        out[o] = {
            corner: (float(np.mean(m[i][longer] > 0)), float(np.mean(m[i][shorter] > 0)))
            for corner, i in (("own", np.argmax(w[:, k])), ("other", np.argmin(w[:, k])))
        }
        out[o]["pairs"] = (int(longer.sum()), int(shorter.sum()))
    return out


def length_balanced(front: dict, gap: np.ndarray) -> np.ndarray:
    """Per w and objective, the mean of the accuracies on chosen-longer and on chosen-shorter pairs.

    Any rule on length alone ("shorter wins", "longer wins") scores 0.5 here
    whatever the mix of pairs, so what rises above 0.5 was learned beyond
    length; plain accuracy rewards a length rule by as much as the held-out
    pairs lean one way.
    """
    m, obj = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"])
    out = np.empty((len(m), len(front["objectives"])))
    for k in range(out.shape[1]):
        longer, shorter = (obj == k) & (gap > 0), (obj == k) & (gap < 0)
        out[:, k] = 0.5 * ((m[:, longer] > 0).mean(1) + (m[:, shorter] > 0).mean(1))
    return out


def discordant(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """Pairs right (margin > 0) under ``a`` only, under ``b`` only, and the sign-test p on those two counts
    (1 when no pair differs): two points of a front compared on the same held-out pairs."""
    from scipy import stats

    n_a, n_b = int(((a > 0) & (b <= 0)).sum()), int(((b > 0) & (a <= 0)).sum())
    return n_a, n_b, stats.binomtest(n_a, n_a + n_b).pvalue if n_a + n_b else 1.0


def corner_test(front: dict) -> dict:
    """Per objective k, its corner against the other corner on the same held-out pairs.

    (pairs only k's corner gets right, pairs only the other corner gets right,
    sign-test p on those, Wilcoxon p on the margins): w's effect against the
    noise of a small held-out set, which the accuracies alone do not show.
    """
    from scipy import stats

    m, obj, w = np.asarray(front["pair_margins"]), np.asarray(front["pair_objective"]), np.asarray(front["weights"])
    out = {}
    for k, o in enumerate(front["objectives"]):
        own, other = m[np.argmax(w[:, k])][obj == k], m[np.argmin(w[:, k])][obj == k]
        n_own, n_other, sign_p = discordant(own, other)
        # a model that ignores w (--fixed-weights) has equal corners: nothing to test, p = 1
        wilcoxon_p = stats.wilcoxon(own, other).pvalue if np.any(own != other) else 1.0
        out[o] = (n_own, n_other, sign_p, wilcoxon_p)
    return out


def order_breaks(front: dict) -> dict[str, list[tuple]]:
    """Per objective k, the grid steps where raising w_k lowers k's held-out accuracy.

    Whether the front follows w, step by step: each break is (w_k before,
    w_k after, accuracy change) and, where front.json keeps every pair's
    margin, the pairs that step turns wrong and right and their sign-test p,
    so a break of a pair or two reads as the noise it is. Ties are not breaks.
    """
    w, points = np.asarray(front["weights"], dtype=float), np.asarray(front["points"], dtype=float)
    m = np.asarray(front["pair_margins"]) if "pair_margins" in front else None
    out = {}
    for k, o in enumerate(front["objectives"]):
        order = np.argsort(w[:, k], kind="stable")
        own = np.asarray(front.get("pair_objective", [])) == k
        breaks = []
        for i, j in zip(order[:-1], order[1:]):
            drop = points[j, k] - points[i, k]
            if w[j, k] > w[i, k] and drop < 0:
                b = (float(w[i, k]), float(w[j, k]), float(drop))
                if m is not None:
                    b += discordant(m[i][own], m[j][own])  # (turned wrong, turned right, p)
                breaks.append(b)
        out[o] = breaks
    return out


def seed_summary(fronts: list[dict]) -> dict:
    """Mean and spread over fronts of runs that differ only in seed, and each run's trend.

    One short run's front is noisy step by step, so whether raising w_k raises objective k is read
    from the mean over seeds and from each run's least-squares slope of its
    accuracy (and margin) on its own weight.
    """
    first = fronts[0]
    for i, f in enumerate(fronts[1:], 2):
        if f["objectives"] != first["objectives"] or not np.allclose(f["weights"], first["weights"]):
            raise ValueError(
                f"front {i} is over other objectives or weights than front 1: "
                "fronts over different objectives or weights cannot be summarised together"
            )
    w = np.asarray(first["weights"], dtype=float)
    points = np.array([f["points"] for f in fronts], dtype=float)
    margins = np.array([f["margins"] for f in fronts], dtype=float)

    def slopes(values):  # runs x objectives
        return np.array([[np.polyfit(w[:, k], v[:, k], 1)[0] for k in range(w.shape[1])] for v in values])

    return {
        "objectives": first["objectives"],
        "weights": w.tolist(),
        "runs": len(fronts),
        "mean": points.mean(0).tolist(),
        "std": points.std(0, ddof=1).tolist() if len(fronts) > 1 else None,
        "mean_margins": margins.mean(0).tolist(),
        "slopes": slopes(points).tolist(),
        "margin_slopes": slopes(margins).tolist(),
        "mean_length_balanced": (
            np.mean([f["length_balanced"] for f in fronts], 0).tolist()
            if all("length_balanced" in f for f in fronts)
            else None
        ),
    }


def read_front(path) -> dict:
    """A front.json, or a one-line ValueError naming the file (not a KeyError from deep inside)."""
    try:
        front = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a front.json ({e})") from None
    missing = [k for k in ("objectives", "weights", "points", "margins") if k not in front]
    if missing:
        raise ValueError(f"{path}: not a front.json (no {', '.join(missing)})")
    return front


def mean_front(fronts: list[dict], labels: list[str], summary: dict) -> dict[str, dict]:
    """The runs' fronts and their mean front (name -> front dict), for ``plot_fronts``.

    ``summary`` is ``seed_summary(fronts)``. The mean's hypervolume is taken
    at the first run's reference point: a mean front is only compared with
    fronts of the same runs.
    """
    ref = fronts[0].get("reference_point")
    mean = {
        "objectives": summary["objectives"],
        "weights": summary["weights"],
        "points": summary["mean"],
        "metric": fronts[0].get("metric", "accuracy"),
        "hypervolume": hypervolume(summary["mean"], ref),
    }
    runs = {
        label: f if "hypervolume" in f else {**f, "hypervolume": hypervolume(f["points"], f.get("reference_point"))}
        for label, f in zip(labels, fronts)
    }
    return {**runs, f"mean of {len(fronts)}": mean}
