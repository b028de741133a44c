"""Training throughput: groups/s, documents/s and achieved GFLOP/s.

    python benchmarks/throughput.py [--queries 600] [--steps 60] [--device cuda] [--precision bf16]

Times the real training step (``cosdpo.training.loop.train_step``) of the base
ranker (ListNet) and of Weight-COS-DPO fine-tuning on synthetic data, and
compares the achieved float32 rate with a plain matmul measured in the same
run. FLOPs are counted analytically over the padded positions the machine
actually computes (forward + backward ~ 3x forward).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from cosdpo.data import RankingSet, make_schema, write_fold
from cosdpo.evaluation.front import score_base
from cosdpo.models.ranker import BaseRanker, ConditionedRanker, ScorerConfig
from cosdpo.training.loop import TrainConfig, train_step
from cosdpo.training.ltr import FinetuneConfig, ListNetTask, WeightCOSTask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(n: int = 1024, repeats: int = 20, device: str = "cpu", precision: str = "fp32") -> float:
    """The device's measured matmul rate in the training precision: the ceiling the ratios compare with."""
    n = 4 * n if device == "cuda" else n
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[precision]) for _ in range(2))
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def forward_flops(in_dim: int, cfg: ScorerConfig, B: int, L: int) -> float:
    d = cfg.d_model
    per_item = 2 * in_dim * d + cfg.n_layers * (2 * 4 * d * d + 2 * 2 * L * d + 2 * 2 * d * cfg.ff_mult * d) + 2 * d
    return float(B * L * per_item)


def measure(
    model, task, data, batch_size: int, steps: int, in_dim: int, cfg: ScorerConfig, device="cpu", precision="fp32"
):
    acc = Accelerator(cpu=device == "cpu")
    model.to(acc.device)
    autocast = torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    batches = [b for e in range(100) for b in data.epoch_batches(batch_size, 0, e)][: steps + 5]
    settings = TrainConfig(batch_size=batch_size)
    model.train()
    with autocast:
        for i, groups in enumerate(batches[:5]):  # warm-up
            train_step(model, task, data, groups, i, acc, opt, trainable, settings)
    sync(device)
    groups_done = docs = flops = 0
    t0 = time.perf_counter()
    for i, groups in enumerate(batches[5:]):
        with autocast:
            train_step(model, task, data, groups, i, acc, opt, trainable, settings)
        sizes = data.sizes[groups]
        groups_done += len(groups)
        docs += int(sizes.sum())
        flops += 3 * forward_flops(in_dim, cfg, len(groups), int(sizes.max()))
    sync(device)
    seconds = time.perf_counter() - t0
    return groups_done / seconds, docs / seconds, flops / seconds / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", help="an MSLR Fold directory or LETOR file (default: synthetic)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=tuple(DTYPES), help="bf16: forwards under bf16 autocast")
    ap.add_argument("--quick", action="store_true", help="100 queries, 3 timed steps")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.steps, args.batch_size = 100, 3, 8
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        fold = args.data or write_fold(Path(tmp) / "d", args.queries, 0)
        schema = make_schema(136, ["quality1", "quality2"])
        data = RankingSet.load(fold, "train", schema)
    peak = matmul_gflops(256 if args.quick else 1024, device=args.device, precision=args.precision)
    base_cfg, ft_cfg = ScorerConfig(d_model=128), ScorerConfig(d_model=64)
    base = BaseRanker(schema.with_objectives([]), base_cfg)
    base.norm.fit(data.features)
    run = dict(device=args.device, precision=args.precision)
    rows = [
        (
            "base (ListNet)",
            *measure(base, ListNetTask(None, 10), data, args.batch_size, args.steps, 131, base_cfg, **run),
        )
    ]
    # the same network with attention dropout, which sends torch's attention down its unfused path
    dropped_cfg = ScorerConfig(d_model=128, attn_dropout=0.1)
    dropped = BaseRanker(schema.with_objectives([]), dropped_cfg)
    dropped.norm.fit(data.features)
    rows.append(
        (
            "base, attn dropout",
            *measure(dropped, ListNetTask(None, 10), data, args.batch_size, args.steps, 131, dropped_cfg, **run),
        )
    )
    base.cpu()
    data.ref = score_base(base, data)
    model = ConditionedRanker(base, schema, ft_cfg)
    task = WeightCOSTask(FinetuneConfig(objectives=("quality1", "quality2")), None)
    rows.append(("Weight-COS-DPO", *measure(model, task, data, args.batch_size, args.steps, 133, ft_cfg, **run)))
    print(f"{args.device} {args.precision} matmul (same run): {peak:.1f} GFLOP/s; {torch.get_num_threads()} threads")
    print(f"{'':18}{'groups/s':>10}{'docs/s':>10}{'GFLOP/s':>10}{'of matmul':>11}")
    for name, gps, dps, gf in rows:
        print(f"{name:18}{gps:10.1f}{dps:10.0f}{gf:10.2f}{gf / peak:10.1%}")
    print(f"base without / with attention dropout: {rows[0][2] / rows[1][2]:.2f}x the docs/s")
    print(f"(batch {args.batch_size} groups, mean group size {np.mean(data.sizes):.1f}, {args.steps} timed steps)")


if __name__ == "__main__":
    main()
