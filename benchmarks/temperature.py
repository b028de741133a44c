"""Temperature control after training: the linear-transformation check and Figure 3.

1. Train Weight-COS-DPO at beta = 0.5 and beta = 2.0 (seeds 0 and 1 each),
   serve all four at a common beta' by s_base + (beta / beta') (s - s_base),
   and compare the fronts across temperatures against the spread between
   seeds at the same temperature (hypervolume and mean per-point distance).
2. Train Temperature-COS-DPO once and measure fronts for beta vectors.
3. Draw the paper's Figure 3: fronts of one Weight-COS model at several
   beta' (they translate toward the base), and of the Temperature-COS model
   at several beta vectors, with the base point.

    python benchmarks/temperature.py [--out runs/temperature] [--queries 1000] [--epochs 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from cosdpo.atomic import write_json
from cosdpo.data import RankingSet, write_fold
from cosdpo.evaluation.front import ranker_front
from cosdpo.evaluation.plot import draw_fronts, new_figure, save_figure
from cosdpo.training.ltr import BaseConfig, FinetuneConfig, finetune, train_base

OBJECTIVES = ("quality1", "quality2")
BETA_VECTORS = [(1.0, 1.0), (0.3, 0.3), (3.0, 3.0), (3.0, 0.3), (0.3, 3.0)]


def distance(a: dict, b: dict) -> float:
    """Mean Euclidean distance between the points of two fronts on the same grid."""
    return float(np.linalg.norm(np.asarray(a["points"]) - np.asarray(b["points"]), axis=1).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/temperature")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--common", type=float, default=1.0, help="the common beta' both models are served at")
    ap.add_argument("--data", help="a Fold directory or LETOR file with MSLR's objectives (default: synthetic)")
    ap.add_argument("--quick", action="store_true", help="80 queries, 1 epoch: checks the script runs")
    args = ap.parse_args()
    small = {}
    if args.quick:
        args.queries, args.epochs, small = 80, 1, dict(d_model=16, n_heads=2, n_layers=1)
    out = Path(args.out)
    data = args.data or write_fold(out / "data", args.queries, 0, overwrite=True)
    train_base(data, out / "base", BaseConfig(epochs=args.epochs, progress=False, **small), overwrite=True)

    def tune(name, **kw):
        cfg = FinetuneConfig(objectives=OBJECTIVES, epochs=args.epochs, progress=False, **small, **kw)
        return finetune(data, out / "base", out / name, cfg, overwrite=True)[0]

    models = {
        (beta, seed): tune(f"wcos-b{beta}-s{seed}", beta=beta, seed=seed)
        for beta, seed in itertools.product((0.5, 2.0), (0, 1))
    }
    tcos = tune("tcos", method="tcos")
    test = RankingSet.load(data, "test", tcos.schema)
    at_common = {key: ranker_front(m, test, beta_prime=args.common) for key, m in models.items()}

    report = {"common_beta": args.common, "hypervolume": {}, "cross_temperature": {}, "seed_spread": {}}
    for (beta, seed), f in at_common.items():
        report["hypervolume"][f"beta={beta} seed={seed} -> {args.common}"] = f["hypervolume"]
    for seed in (0, 1):
        a, b = at_common[(0.5, seed)], at_common[(2.0, seed)]
        report["cross_temperature"][f"seed {seed}"] = {
            "distance": distance(a, b),
            "hv_gap": abs(a["hypervolume"] - b["hypervolume"]),
        }
    for beta in (0.5, 2.0):
        a, b = at_common[(beta, 0)], at_common[(beta, 1)]
        report["seed_spread"][f"beta {beta}"] = {
            "distance": distance(a, b),
            "hv_gap": abs(a["hypervolume"] - b["hypervolume"]),
        }

    served = {bp: ranker_front(models[(0.5, 0)], test, beta_prime=bp) for bp in (0.25, 0.5, 1.0, 2.0, 8.0)}
    tfronts = {bv: ranker_front(tcos, test, beta_prime=list(bv)) for bv in BETA_VECTORS}
    report["wcos_served"] = {
        str(bp): {"hypervolume": f["hypervolume"], "main_ndcg": f["main_ndcg"]["mean"], "w=(0.5,0.5)": f["points"][5]}
        for bp, f in served.items()
    }
    report["tcos"] = {
        str(bv): {
            "hypervolume": f["hypervolume"],
            "main_ndcg": f["main_ndcg"]["mean"],
            "centroid": np.mean(f["points"], axis=0).tolist(),
        }
        for bv, f in tfronts.items()
    }
    report["base_point"] = tfronts[BETA_VECTORS[0]]["base_point"]
    write_json(out / "temperature.json", report)

    fig, axes = new_figure(1, 2, figsize=(11, 4.6))
    axes = axes[0]
    draw_fronts(axes[0], {f"beta'={bp}": f for bp, f in served.items()}, annotate=False)
    axes[0].set_title("Weight-COS-DPO (trained at beta=0.5), served at beta'")
    draw_fronts(axes[1], {f"beta={bv}": f for bv, f in tfronts.items()}, annotate=False)
    axes[1].set_title("Temperature-COS-DPO, served at beta vectors")
    for ax in axes:
        ax.legend(fontsize=7)
    save_figure(fig, out / "figure3.png")
    print(json.dumps({k: report[k] for k in ("cross_temperature", "seed_spread", "hypervolume")}, indent=1))
    print(json.dumps({k: report[k] for k in ("wcos_served", "tcos", "base_point")}, indent=1))
    print(f"wrote {out / 'temperature.json'} and {out / 'figure3.png'}")


if __name__ == "__main__":
    main()
