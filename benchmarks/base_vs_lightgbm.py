"""Base ranker vs LightGBM lambdarank on the same rows of a LETOR file.

Both models train on the same query split (train / vali for early stopping)
and are scored by the same NDCG@10 on the test split; repeated over several
split seeds because a small sample gives noisy single splits.

    python benchmarks/base_vs_lightgbm.py [--data LETOR_FILE] [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np

from cosdpo.data import RankingSet, make_schema
from cosdpo.data.letor import dataset_width
from cosdpo.evaluation.front import ndcg_report, score_base
from cosdpo.training.ltr import BaseConfig, train_base

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mslr-sample" / "train.txt"


def lightgbm_scores(train: RankingSet, vali: RankingSet, test: RankingSet, seed: int) -> np.ndarray:
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="one split, two epochs: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 2
    schema = make_schema(dataset_width(args.data))
    rows = []
    for seed in range(args.seeds):
        parts = {s: RankingSet.load(args.data, s, schema, seed) for s in ("train", "vali", "test")}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            model, _ = train_base(
                args.data,
                Path(tmp) / "base",
                BaseConfig(epochs=args.epochs, batch_size=8, split_seed=seed, seed=seed, patience=10, progress=False),
            )
        t_ours = time.perf_counter() - t0
        ours = ndcg_report(parts["test"], score_base(model, parts["test"]))["main"]
        t0 = time.perf_counter()
        theirs = ndcg_report(parts["test"], lightgbm_scores(parts["train"], parts["vali"], parts["test"], seed))["main"]
        t_lgb = time.perf_counter() - t0
        rows.append((ours, theirs, t_ours, t_lgb))
        print(
            f"split seed {seed}: cosdpo base NDCG@10 {ours:.4f} ({t_ours:.1f} s)   "
            f"LightGBM lambdarank {theirs:.4f} ({t_lgb:.1f} s)"
        )
    r = np.array(rows)
    print(
        f"\nmean over {args.seeds} splits: cosdpo base {r[:, 0].mean():.4f} +- {r[:, 0].std():.4f}, "
        f"LightGBM {r[:, 1].mean():.4f} +- {r[:, 1].std():.4f}; ratio {r[:, 0].mean() / r[:, 1].mean():.3f}; "
        f"wins {int((r[:, 0] >= r[:, 1]).sum())}/{args.seeds}"
    )


if __name__ == "__main__":
    main()
