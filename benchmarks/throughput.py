"""Training throughput: groups/s, documents/s and achieved GFLOP/s.

    python benchmarks/throughput.py [--queries 600] [--steps 60] [--data FILE] [--device cuda] [--precision bf16]

Times the real training step (``cosdpo.training.loop.train_step``) of the base
ranker (ListNet) and of Weight-COS-DPO fine-tuning on synthetic data, and
compares the achieved float32 rate with a plain matmul measured in the same
run: the best of bursts before and after the rows, against each row's best
of three passes over the same batches. FLOPs are counted analytically over
the padded positions the machine actually computes (forward + backward ~ 3x
forward): a step pads each run of similar list lengths on its own
(``RankingSet.length_buckets``).

Where allRank 1.4.3 is installed (``pip install --no-deps allRank==1.4.3``:
its own requirements pin a torch from 2021), the same rows also train through
allRank's own path: its dataset (every list padded to the longest, no
document dropped), data loader, transformer of the same width, depth, heads,
feed-forward width and dropout, ListNet loss and ``loss_batch`` step.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from cosdpo.data import RankingSet, make_schema, write_fold
from cosdpo.evaluation.front import score_base
from cosdpo.models.ranker import BaseRanker, ConditionedRanker, ScorerConfig
from cosdpo.training.loop import TrainConfig, keep_freed_memory, train_step
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
    model,
    task,
    data,
    batch_size: int,
    steps: int,
    in_dim: int,
    cfg: ScorerConfig,
    device="cpu",
    precision="fp32",
    passes: int = 3,
):
    """(groups/s, docs/s, GFLOP/s) of the best of ``passes`` timed passes over the same ``steps`` batches:
    the same work each pass, so the best is the one least disturbed by the rest of the machine."""
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
    timed = batches[5:]
    groups_done = sum(len(groups) for groups in timed)
    docs = sum(int(data.sizes[groups].sum()) for groups in timed)
    flops = sum(  # over the padded forwards each step runs
        3 * forward_flops(in_dim, cfg, len(run), int(data.sizes[run].max()))
        for groups in timed
        for run in data.length_buckets(groups)
    )
    best = float("inf")
    for _ in range(passes):
        sync(device)
        t0 = time.perf_counter()
        for i, groups in enumerate(timed):
            with autocast:
                train_step(model, task, data, groups, i, acc, opt, trainable, settings)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return groups_done / best, docs / best, flops / best / 1e9


def import_allrank():
    """allRank's training modules, or None. At import, allRank reaches for torchvision (only for
    ``transforms.Compose``) and for Google Cloud Storage file helpers (gcsfs, pkg_resources); where those are
    absent, a plain Compose and local ``open`` stand in: neither is on the path measured here."""
    try:
        import allrank  # noqa: F401
    except ImportError:
        return None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        transforms = types.ModuleType("torchvision.transforms")

        class Compose:
            def __init__(self, steps):
                self.steps = steps

            def __call__(self, sample):
                for step in self.steps:
                    sample = step(sample)
                return sample

        transforms.Compose = Compose
        sys.modules["torchvision"] = types.ModuleType("torchvision")
        sys.modules["torchvision"].transforms = transforms
        sys.modules["torchvision.transforms"] = transforms
    try:
        import allrank.utils.file_utils  # noqa: F401
    except ImportError:
        files = types.ModuleType("allrank.utils.file_utils")
        files.open_local_or_gs, files.is_gs_path, files.copy_file_to_local = open, lambda uri: False, str
        sys.modules["allrank.utils.file_utils"] = files
    from allrank import config, models, training  # noqa: F401
    from allrank.data import dataset_loading
    from allrank.models.losses import listNet
    from allrank.models.model import make_model
    from allrank.training.train_utils import loss_batch

    return types.SimpleNamespace(
        TransformerConfig=config.TransformerConfig,
        PADDED_Y_VALUE=dataset_loading.PADDED_Y_VALUE,
        FixLength=dataset_loading.FixLength,
        LibSVMDataset=dataset_loading.LibSVMDataset,
        ToTensor=dataset_loading.ToTensor,
        Compose=sys.modules["torchvision.transforms"].Compose,
        listNet=listNet,
        make_model=make_model,
        loss_batch=loss_batch,
    )


def measure_allrank(ar, data: RankingSet, cfg: ScorerConfig, batch_size: int, steps: int, passes: int = 3) -> tuple:
    """allRank's training step on the same rows, input features and labels: (groups/s, docs/s)."""
    from scipy.sparse import csr_matrix
    from torch.utils.data import DataLoader

    inputs = data.features
    qids = np.repeat(np.arange(len(data.sizes)), data.sizes)
    ds = ar.LibSVMDataset(csr_matrix(inputs), data.main.astype(np.float64), qids)
    ds.transform = ar.Compose([ar.FixLength(int(ds.longest_query_length)), ar.ToTensor()])
    layers = ar.TransformerConfig(
        N=cfg.n_layers, d_ff=cfg.ff_mult * cfg.d_model, h=cfg.n_heads, dropout=cfg.dropout, positional_encoding=None
    )
    fc = {"sizes": [cfg.d_model], "input_norm": True, "activation": "ReLU", "dropout": 0.0}
    model = ar.make_model(fc, layers, {"d_output": 1}, inputs.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = (b for _ in itertools.count() for b in loader)

    def step():
        xb, yb, idx = next(batches)
        ar.loss_batch(model, ar.listNet, xb, yb, idx, 1.0, opt)
        return len(xb), int((yb != ar.PADDED_Y_VALUE).sum())

    for _ in range(5):  # warm-up
        step()
    # every list is padded to the longest, so a pass's work depends only on its groups
    best = float("inf"), 0, 0
    for _ in range(passes):
        t0 = time.perf_counter()
        groups, docs = np.sum([step() for _ in range(steps)], axis=0)
        best = min(best, (time.perf_counter() - t0, groups, docs))
    return best[1] / best[0], best[2] / best[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=600)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", help="an MSLR Fold directory or LETOR file (default: synthetic)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=tuple(DTYPES), help="bf16: forwards under bf16 autocast")
    ap.add_argument(
        "--no-allrank", action="store_true", help="skip allRank (it pads every list to the longest: slow on long lists)"
    )
    ap.add_argument("--quick", action="store_true", help="100 queries, 3 timed steps")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.steps, args.batch_size = 100, 3, 8
    if args.device == "cpu":
        keep_freed_memory()  # as every CPU training run does (training/loop.py)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        fold = args.data or write_fold(Path(tmp) / "d", args.queries, 0)
        schema = make_schema(136, ["quality1", "quality2"])
        data = RankingSet.load(fold, "train", schema)
    matmul = dict(n=256 if args.quick else 1024, device=args.device, precision=args.precision)
    # the ceiling is the best of bursts before and after the rows: on a shared or throttling machine one
    # burst can read low, which would flatter every "of matmul" figure
    bursts = [matmul_gflops(**matmul) for _ in range(3)]
    base_cfg, ft_cfg = ScorerConfig(d_model=128), ScorerConfig(d_model=64)
    base = BaseRanker(schema.with_objectives([]), base_cfg)
    base.norm.fit(data.features)
    passes = 1 if args.quick else 3
    run = dict(device=args.device, precision=args.precision, passes=passes)
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
    allrank = import_allrank() if args.device == "cpu" and not args.no_allrank else None
    if allrank is not None:
        ranked = measure_allrank(allrank, data, base_cfg, args.batch_size, args.steps, passes)
        rows.append(("allRank 1.4.3", *ranked, None))
    base.cpu()
    data.ref = score_base(base, data)
    model = ConditionedRanker(base, schema, ft_cfg)
    task = WeightCOSTask(FinetuneConfig(objectives=("quality1", "quality2")), None)
    rows.append(("Weight-COS-DPO", *measure(model, task, data, args.batch_size, args.steps, 133, ft_cfg, **run)))
    bursts += [matmul_gflops(**matmul) for _ in range(3)]
    peak = max(bursts)
    print(
        f"{args.device} {args.precision} matmul (same run, best of {len(bursts)} bursts before and after): "
        f"{peak:.1f} GFLOP/s (lowest {min(bursts):.1f}); {torch.get_num_threads()} threads"
    )
    print(f"{'':20}{'groups/s':>10}{'docs/s':>10}{'GFLOP/s':>10}{'of matmul':>11}")
    for name, gps, dps, gf in rows:
        rate = "" if gf is None else f"{gf:10.2f}{gf / peak:10.1%}"
        print(f"{name:20}{gps:10.1f}{dps:10.0f}{rate}")
    print(f"base without / with attention dropout: {rows[0][2] / rows[1][2]:.2f}x the docs/s")
    if allrank is None and not args.no_allrank:
        print("allRank: not installed (pip install --no-deps allRank==1.4.3)")
    elif allrank is not None:
        print(f"base / allRank 1.4.3: {rows[0][2] / rows[2][2]:.2f}x the docs/s")
    print(
        f"(batch {args.batch_size} groups, mean group size {np.mean(data.sizes):.1f}, "
        f"best of {passes} passes over {args.steps} timed steps)"
    )


if __name__ == "__main__":
    main()
