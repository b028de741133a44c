"""Weight-COS-DPO against retraining, and the base ranker against LightGBM, on real MSLR rows.

    python benchmarks/real_mslr.py [--data FILE] [--k 2 5] [--splits 5] [--first-split 0] [--seeds 3] [--first-seed 0]
        [--methods wcos,ls,soup,modpo] [--budget-ratio 0.3] [--variant NAME=VALUE,...]
        [--base NAME=VALUE,...] [--out DIR] [--reuse] [--quick]

Query-level cross-validation: split s is the seeded 60/20/20 split of the
file's queries (train / validation, for early stopping and model choice /
test, never seen in training). For every split and training seed it trains
the base ranker and LightGBM lambdarank on the same rows (NDCG@10 on the
test queries), then runs ``ltr compare``'s comparison under its budget rule,
and prints, per split and seed and as a mean, for each baseline B:
hypervolume of Weight-COS-DPO / B's (also as a geometric mean: with 8 test
queries a split, one objective near 0 can make a ratio 3 or 1/3), main
NDCG@10 of Weight-COS-DPO - B's, and Weight-COS-DPO's optimizer steps and
training seconds / B's.
``--variant`` adds Weight-COS-DPO runs at other settings, each at the same
number of steps as the compared one (e.g. ``--variant weight_sampling=group``),
unless it sets a budget of its own (``--variant min_steps=100``: the
finetune defaults with that step floor, early stopping included).
``--reuse`` keeps the base rankers and comparisons already in OUT and runs
only the variants, so settings can be tried against fronts trained once, and
any baseline (soup, modpo) a comparison lacks.
Everything is written to OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
from wcos_budget import setting  # beside this script

from cosdpo.data import RankingSet, make_schema
from cosdpo.data.letor import dataset_width
from cosdpo.evaluation.front import ndcg_report, score_base
from cosdpo.models.ranker import load_ranker
from cosdpo.training.compare import BUDGET_RATIO, CompareConfig, compare
from cosdpo.training.ltr import BaseConfig, FinetuneConfig, train_base

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mslr-sample" / "train.txt"
OBJECTIVES = {
    2: ("quality1", "url_clicks"),
    5: ("quality1", "quality2", "query_url_clicks", "url_clicks", "dwell_time"),
}
QUICK = dict(d_model=16, n_heads=2, n_layers=1)
BUDGET = {"epochs", "max_steps", "min_steps", "patience"}


def lightgbm_scores(train: RankingSet, vali: RankingSet, test: RankingSet, seed: int) -> np.ndarray:
    """LightGBM lambdarank at common settings: at most 500 trees, lr 0.05, 31 leaves, early stopping on vali."""
    model = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=500,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        random_state=seed,
        verbose=-1,
    )
    model.fit(
        train.features,
        train.main,
        group=train.sizes,
        eval_X=(vali.features,),
        eval_y=(vali.main,),
        eval_group=[vali.sizes],
        eval_at=[10],
        callbacks=[lgb.early_stopping(50, verbose=False)],
    )
    return model.predict(test.features)


def ratios(m: dict, baseline: str) -> dict:
    w, b = m["wcos"], m[baseline]
    return {
        "hypervolume": w["hypervolume"] / b["hypervolume"],
        "ndcg_diff": w["main_ndcg"]["mean"] - b["main_ndcg"]["mean"],
        "steps": w["train_steps"] / b["train_steps"],
        "seconds": w["train_seconds"] / b["train_seconds"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--k", type=int, nargs="+", default=[2, 5], choices=sorted(OBJECTIVES))
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--first-split", type=int, default=0, help="run splits FIRST..SPLITS-1 (to add one to a table)")
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..SEEDS-1 (to add one to a table)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default="wcos,ls,soup,modpo")
    ap.add_argument("--budget-ratio", type=float, default=BUDGET_RATIO)
    ap.add_argument("--grid", type=int, default=None, help="grid weights (default: compare's, 11 and 35)")
    ap.add_argument("--variant", type=setting, action="append", default=[], help="Weight-COS-DPO at other settings")
    ap.add_argument("--finetune", type=setting, default={}, help="settings of every fine-tuned model")
    ap.add_argument(
        "--base", type=lambda t: setting(t, BaseConfig), default={}, help="base ranker settings NAME=VALUE,..."
    )
    ap.add_argument("--base-only", action="store_true", help="the base ranker against LightGBM only")
    ap.add_argument("--out", default="runs/real-mslr")
    ap.add_argument("--reuse", action="store_true", help="keep the base rankers and comparisons already in --out")
    ap.add_argument("--quick", action="store_true", help="one split and seed, tiny models, K = 2: checks the script")
    args = ap.parse_args()
    small = {}
    if args.quick:
        args.splits, args.seeds, args.k, args.grid, small = 1, 1, [2], 3, QUICK
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = tuple(args.methods.split(","))
    schema = make_schema(dataset_width(args.data))
    runs = []
    for split in range(args.first_split, args.splits):
        parts = {s: RankingSet.load(args.data, s, schema, split) for s in ("train", "vali", "test")}
        for seed in range(args.first_seed, args.seeds):
            run = {"split": split, "seed": seed}
            base_cfg = BaseConfig(**({"split_seed": split, "seed": seed, "progress": False} | small | args.base))
            if args.quick:
                base_cfg = replace(base_cfg, epochs=2)
            t0 = time.perf_counter()
            if args.reuse and (out / f"base-{split}-{seed}" / "model.safetensors").is_file():
                base = load_ranker(out / f"base-{split}-{seed}")
            else:
                base, _ = train_base(args.data, out / f"base-{split}-{seed}", base_cfg, overwrite=True)
            run["base"] = {
                "ndcg": ndcg_report(parts["test"], score_base(base, parts["test"]))["main"],
                "seconds": time.perf_counter() - t0,
            }
            t0 = time.perf_counter()
            lgb = lightgbm_scores(parts["train"], parts["vali"], parts["test"], seed)
            run["lightgbm"] = {"ndcg": ndcg_report(parts["test"], lgb)["main"], "seconds": time.perf_counter() - t0}
            print(
                f"split {split} seed {seed}: base NDCG@10 {run['base']['ndcg']:.4f}, "
                f"LightGBM {run['lightgbm']['ndcg']:.4f}",
                flush=True,
            )
            for k in [] if args.base_only else args.k:
                train = FinetuneConfig(
                    **(
                        {"objectives": OBJECTIVES[k], "split_seed": split, "seed": seed, "progress": False}
                        | small
                        | args.finetune
                    )
                )
                if args.quick:
                    train = replace(train, epochs=2, min_steps=4)
                where = out / f"k{k}-{split}-{seed}"
                if args.reuse and (where / "compare.json").is_file():
                    result = json.loads((where / "compare.json").read_text())
                    if result["settings"]["budget_ratio"] != args.budget_ratio:
                        raise SystemExit(f"--reuse: {where} was compared at another budget ratio")
                    result["methods"] |= baselines_added(
                        args, where, out / f"base-{split}-{seed}", train, result, methods
                    )
                    result["methods"] = {m: result["methods"][m] for m in methods}
                else:
                    result = compare(
                        args.data,
                        out / f"base-{split}-{seed}",
                        where,
                        CompareConfig(
                            train, methods=methods, grid=args.grid, budget_ratio=args.budget_ratio, overwrite=True
                        ),
                    )
                m = result["methods"]
                row = {"methods": {name: _summary(f) for name, f in m.items()}}
                row["ratios"] = {b: ratios(m, b) for b in m if b != "wcos" and "wcos" in m}
                for i, variant in enumerate(args.variant):
                    # a variant that sets a budget trains at its own, any other at the compared steps
                    budget = {} if BUDGET & variant.keys() else {"max_steps": m["wcos"]["train_steps"], "patience": 0}
                    cfg = replace(train, **(budget | variant))
                    v = compare(
                        args.data,
                        out / f"base-{split}-{seed}",
                        where / f"variant-{i}",
                        CompareConfig(cfg, methods=("wcos",), grid=len(result["weights"]), overwrite=True),
                    )["methods"]["wcos"]
                    row.setdefault("variants", []).append({"settings": variant} | _summary(v))
                run[f"k{k}"] = row
                print(_line(k, row), flush=True)
            runs.append(run)
            (out / "results.json").write_text(json.dumps({"settings": vars(args), "runs": runs}, indent=1))
    print(_means(runs, args.k))


def baselines_added(args, where: Path, base_dir: Path, train, result: dict, methods) -> dict:
    """--reuse with baselines the comparison in ``where`` lacks: they train at its grid into
    ``where/added`` (kept for the next --reuse); Weight-COS-DPO's budget depends on DPO-LS's, so neither
    can be added."""
    added = where / "added" / "compare.json"
    have = json.loads(added.read_text())["methods"] if added.is_file() else {}
    missing = tuple(m for m in methods if m not in result["methods"] and m not in have)
    if {"wcos", "ls"} & set(missing):
        raise SystemExit(f"--reuse: {where} has no {' or '.join(sorted({'wcos', 'ls'} & set(missing)))} to reuse")
    if missing:
        cfg = CompareConfig(train, methods=missing, grid=len(result["weights"]), overwrite=True)
        have |= compare(args.data, base_dir, added.parent, cfg)["methods"]
    return have


def _summary(front: dict) -> dict:
    return {
        "hypervolume": front["hypervolume"],
        "main_ndcg": front["main_ndcg"]["mean"],
        "train_steps": front["train_steps"],
        "train_seconds": front["train_seconds"],
    }


def _line(k: int, row: dict) -> str:
    parts = [
        f"{b}: hv x{r['hypervolume']:.3f}, NDCG {r['ndcg_diff']:+.4f}, "
        f"steps x{r['steps']:.2f}, time x{r['seconds']:.2f}"
        for b, r in row["ratios"].items()
    ]
    ref = row["methods"]["ls"]["hypervolume"] if "ls" in row["methods"] else None
    for v in row.get("variants", []):
        rel = f" (x{v['hypervolume'] / ref:.3f} of ls)" if ref else ""
        parts.append(f"variant {v['settings']}: hv {v['hypervolume']:.4f}{rel}, {v['train_steps']} steps")
    return f"  K={k} wcos against " + "; ".join(parts)


def _gmean(ratios) -> float:
    """Hypervolume ratios multiply: with 8 test queries a split, one objective near 0 makes a ratio of 3 or 1/3."""
    return float(np.exp(np.mean(np.log(list(ratios)))))


def _means(runs: list, ks: list) -> str:
    lines = [f"\nmean over {len(runs)} splits x seeds"]
    base = np.array([[r["base"]["ndcg"], r["lightgbm"]["ndcg"]] for r in runs])
    lines.append(
        f"base ranker NDCG@10 {base[:, 0].mean():.4f} +- {base[:, 0].std():.4f}, "
        f"LightGBM {base[:, 1].mean():.4f} +- {base[:, 1].std():.4f}"
    )
    for k in ks:
        rows = [r[f"k{k}"] for r in runs if f"k{k}" in r]
        if not rows:
            continue
        for b in rows[0]["ratios"]:
            r = {key: np.mean([row["ratios"][b][key] for row in rows]) for key in rows[0]["ratios"][b]}
            lines.append(
                f"K={k} wcos / {b}: hypervolume x{r['hypervolume']:.3f} "
                f"(geometric mean x{_gmean(row['ratios'][b]['hypervolume'] for row in rows):.3f}), "
                f"main NDCG@10 {r['ndcg_diff']:+.4f}, steps x{r['steps']:.3f}, time x{r['seconds']:.3f}"
            )
        if "ls" in rows[0]["methods"]:
            for i, v in enumerate(rows[0].get("variants", [])):
                ls = [row["methods"]["ls"] for row in rows]
                hv = [row["variants"][i]["hypervolume"] / b["hypervolume"] for row, b in zip(rows, ls)]
                ndcg = np.mean([row["variants"][i]["main_ndcg"] - b["main_ndcg"] for row, b in zip(rows, ls)])
                steps = np.mean([row["variants"][i]["train_steps"] / b["train_steps"] for row, b in zip(rows, ls)])
                lines.append(
                    f"K={k} variant {v['settings']}: hypervolume x{np.mean(hv):.3f} of ls "
                    f"(geometric mean x{_gmean(hv):.3f}), main NDCG@10 {ndcg:+.4f}, steps x{steps:.3f}"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
