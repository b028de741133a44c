"""Weight-COS-DPO given a share of DPO-LS's time instead of its epochs per model.

    python benchmarks/wcos_budget.py --k 5 --wcos epochs=45,patience=0,alpha=0.1 [--wcos ...]
    python benchmarks/wcos_budget.py --k 2 --budget-ratio 0.3 --wcos alpha=0.05 [--wcos ...]

Uses the data and base of ``benchmarks/compare.py --out DIR`` (run that
first), trains DPO-LS at compare's settings (15 epochs per model), then each
``--wcos`` setting of Weight-COS-DPO, all in this one run, and prints each
one's hypervolume and training time as ratios against DPO-LS's. The paper
compares at a time ratio of 0.28; compare.py's equal epochs give ours about
0.11, so the question is what the rest of a third of DPO-LS's time buys.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from compare import OBJECTIVES  # benchmarks/compare.py, beside this script

from cosdpo.training.compare import CompareConfig, compare
from cosdpo.training.ltr import FinetuneConfig


def setting(text: str, config=FinetuneConfig) -> dict:
    """'epochs=45,alpha=0.1' -> typed fields of ``config`` (the int, float and str ones, unset or not)."""
    optional = {"int | None": int, "float | None": float}  # e.g. min_steps, unset by default
    types = {
        f.name: optional.get(f.type, type(f.default))
        for f in fields(config)
        if (type(f.default) in (int, float, str) or f.type in optional) and f.name != "seed"
    }  # --seed sets every model's
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        if name not in types or not value:
            raise argparse.ArgumentTypeError(f"{item!r} is not NAME=VALUE with NAME one of {', '.join(sorted(types))}")
        try:
            out[name] = types[name](value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a {types[name].__name__}, got {value!r}") from None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=2, choices=range(2, 6))
    ap.add_argument("--out", default=None, help="compare.py's --out (default runs/compare-kK)")
    ap.add_argument("--epochs", type=int, default=15, help="DPO-LS epochs per model, as in compare.py")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every model (data and base: compare.py's)")
    ap.add_argument(
        "--wcos",
        action="append",
        type=setting,
        default=None,
        help="Weight-COS-DPO settings NAME=VALUE,...; repeat for several",
    )
    ap.add_argument(
        "--budget-ratio",
        type=float,
        default=None,
        help="each setting without max_steps trains this share of DPO-LS's optimizer steps in this run, "
        "no early stop (ltr compare's rule)",
    )
    ap.add_argument("--data", help="the data compare.py used (default: its synthetic OUT/data)")
    ap.add_argument("--quick", action="store_true", help="one epoch each, on compare.py --quick's folder")
    args = ap.parse_args()
    if args.budget_ratio is not None and args.budget_ratio <= 0:
        ap.error(f"--budget-ratio must be > 0, got {args.budget_ratio}")
    if args.quick:
        args.epochs, args.wcos = 1, [dict(epochs=2, patience=0)]
    out = Path(args.out or f"runs/compare-k{args.k}")
    if not (out / "base" / "config.json").is_file():
        raise SystemExit(f"{out} holds no base: run benchmarks/compare.py --k {args.k} --out {out} first")
    grid = None if args.k == 2 else 15
    runs = [("ls", dict(epochs=args.epochs))] + [("wcos", s) for s in args.wcos or [dict(epochs=45, patience=0)]]
    ls = None
    for i, (method, kw) in enumerate(runs):
        if ls and args.budget_ratio is not None and "max_steps" not in kw:
            kw = kw | {"max_steps": max(1, round(args.budget_ratio * ls["train_steps"])), "patience": 0}
        cfg = FinetuneConfig(objectives=OBJECTIVES[: args.k], seed=args.seed, progress=False, **kw)
        m = compare(
            args.data or out / "data",
            out / "base",
            out / f"budget-{i}",
            CompareConfig(cfg, methods=(method,), grid=grid, overwrite=True),
        )["methods"][method]
        ls = ls or m
        print(
            f"{method:5s} {kw}: hypervolume {m['hypervolume']:.4f} ({m['hypervolume'] / ls['hypervolume']:.3f} of "
            f"DPO-LS), main NDCG@10 {m['main_ndcg']['mean']:.4f}, train {m['train_seconds']:.1f} s "
            f"({m['train_seconds'] / ls['train_seconds']:.3f} of DPO-LS), {m['train_steps']} steps "
            f"({m['train_steps'] / ls['train_steps']:.3f} of DPO-LS)",
            flush=True,
        )


if __name__ == "__main__":
    main()
