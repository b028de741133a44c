"""One conditioned model against retraining: the side-by-side comparison on synthetic data.

    python benchmarks/compare.py --k 2 --out runs/compare-k2
    python benchmarks/compare.py --k 5 --out runs/compare-k5
    python benchmarks/compare.py --quick          # a few seconds: checks the script runs

Writes synthetic MSLR-shaped data, trains the base ranker, then runs
``cosdpo ltr compare`` (every method: same grid, same epochs per model,
same seed) and prints the table in the paper's shape, plus the two ratios
the claim rests on: Weight-COS-DPO's hypervolume over DPO-LS's and its
training time over DPO-LS's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cosdpo.data import write_fold
from cosdpo.training.compare import CompareConfig, compare, format_table
from cosdpo.training.ltr import BaseConfig, FinetuneConfig, train_base

OBJECTIVES = ("quality1", "quality2", "query_url_clicks", "url_clicks", "dwell_time")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=2, choices=range(2, 6))
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--grid", type=int, default=None, help="default: 11 (K=2), 15 (K=5: the H=2 lattice)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="a Fold directory or LETOR file with MSLR's objectives (default: synthetic)")
    ap.add_argument("--quick", action="store_true", help="60 queries, 1 epoch, 3 grid weights")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.epochs, args.grid = 60, 1, 3
    out = Path(args.out or f"runs/compare-k{args.k}")
    t0 = time.perf_counter()
    data = args.data or write_fold(out / "data", args.queries, args.seed, overwrite=True)
    small = dict(d_model=16, n_heads=2, n_layers=1) if args.quick else {}
    train_base(
        data, out / "base", BaseConfig(epochs=args.epochs, seed=args.seed, progress=False, **small), overwrite=True
    )
    train = FinetuneConfig(objectives=OBJECTIVES[: args.k], epochs=args.epochs, seed=args.seed, progress=False)
    grid = args.grid or (None if args.k == 2 else 15)
    result = compare(
        data,
        out / "base",
        out / "compare",
        CompareConfig(
            train, grid=grid, overwrite=True, extra={"queries": args.queries, "benchmark": "benchmarks/compare.py"}
        ),
    )
    m = result["methods"]
    print(format_table(result))
    print(
        f"\nK={args.k}, {len(result['weights'])} grid weights, {args.queries} queries, {args.epochs} epochs per model"
    )
    print(f"hypervolume  wcos / ls = {m['wcos']['hypervolume'] / m['ls']['hypervolume']:.3f}")
    print(f"train time   wcos / ls = {m['wcos']['train_seconds'] / m['ls']['train_seconds']:.3f}")
    print(f"main NDCG@10 wcos - ls = {m['wcos']['main_ndcg']['mean'] - m['ls']['main_ndcg']['mean']:+.4f}")
    print(f"params       wcos / ls = {m['wcos']['trainable_params'] / m['ls']['trainable_params']:.3f}")
    print(f"total {time.perf_counter() - t0:.0f} s; {out / 'compare' / 'compare.json'}")


if __name__ == "__main__":
    main()
