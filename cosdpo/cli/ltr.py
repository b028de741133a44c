"""``cosdpo ltr ...`` and ``cosdpo demo``: ranking commands over ``cosdpo.training.ltr``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import from_dict
from ..training.compare import CompareConfig
from ..training.ltr import BaseConfig, FinetuneConfig
from .common import floats, friendly
from .options import OUT, OVERWRITE, RESUME, Input, config_command

ltr_app = typer.Typer(help="Learning to rank: base ranker, Weight-COS-DPO fine-tuning, fronts.", no_args_is_help=True)

BETA_PRIME_HELP = (
    "Serving temperature beta' (default: the training beta); larger stays closer to the base. "
    "tcos: one per objective, e.g. 0.5,2."
)
DATA = Input("data", "A Fold directory (train.txt, vali.txt, test.txt) or one LETOR file (split 60/20/20 by query).")
BASE = Input("base", "Folder of the base ranker (from train-base).")


def _train_base(given, values):
    from ..training.ltr import train_base

    cfg = from_dict(BaseConfig, values["train"], "ltr train-base")
    _, m = train_base(given["data"], Path(given["out"]), cfg, resume=given["resume"], overwrite=given["overwrite"])
    typer.echo(
        f"base ranker in {given['out']}: validation NDCG@10 {m['val_ndcg']:.4f}, "
        f"{m['train_seconds']:.1f} s, {m['epochs_run']} epochs"
    )


def _finetune(given, values):
    from ..training.ltr import finetune

    cfg = from_dict(FinetuneConfig, values["train"], "ltr finetune")
    _, m = finetune(
        given["data"], given["base"], Path(given["out"]), cfg, resume=given["resume"], overwrite=given["overwrite"]
    )
    typer.echo(
        f"conditioned ranker in {given['out']}: validation {m['best_val']:.4f} "
        f"({'hypervolume' if cfg.method in ('wcos', 'tcos') else 'w . NDCG'}), {m['steps']} steps, "
        f"{m['train_seconds']:.1f} s, {m['trainable_params']} trainable parameters"
    )


def _compare(given, values):
    from ..training.compare import compare, format_table

    train = from_dict(FinetuneConfig, values["train"], "ltr compare")
    cfg = from_dict(CompareConfig, values["compare"] | {"train": train, "overwrite": given["overwrite"]}, "ltr compare")
    out = Path(given["out"])
    typer.echo(f"budget: {cfg.budget_rule()}")
    result = compare(given["data"], given["base"], out, cfg)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")


config_command(
    ltr_app,
    "train-base",
    "ltr train-base",
    {"train": BaseConfig},
    [DATA, OUT, RESUME, OVERWRITE],
    _train_base,
    "Train the base ranker (ListNet on the relevance label).",
)
config_command(
    ltr_app,
    "finetune",
    "ltr finetune",
    {"train": FinetuneConfig},
    [DATA, BASE, OUT, RESUME, OVERWRITE],
    _finetune,
    "Fine-tune one ranker conditioned on w for every trade-off (Weight-COS-DPO).",
    choices={"method": ("wcos", "tcos", "ls")},
)
config_command(
    ltr_app,
    "compare",
    "ltr compare",
    {"train": FinetuneConfig, "compare": CompareConfig},
    [DATA, BASE, OUT, OVERWRITE],
    _compare,
    "Train every method on the same grid (Weight-COS-DPO on --budget-ratio of DPO-LS's steps); "
    "writes compare.json and compare.png.",
    hide=("method", "fixed_weights", "checkpoint_every"),
    accepts=("ltr finetune",),
)


@ltr_app.command("front")
@friendly
def ltr_front(
    model: Path = typer.Option(..., help="Folder of a fine-tuned ranker."),
    data: Path = typer.Option(..., "--data", help=DATA.help),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    split: str = typer.Option("test", help="test, vali, train, or all (the whole file/folder)."),
    grid: Optional[int] = typer.Option(
        None, help="Grid size: N evenly spaced weights for K=2 (default 11); at most N points for K>2 (default 50)."
    ),
    grid_kind: str = typer.Option("lattice", "--grid-kind", help="K>2: lattice or dirichlet."),
    k: int = typer.Option(10, help="NDCG cut-off."),
    reference: Optional[str] = typer.Option(None, help="Hypervolume reference point, e.g. 0.5,0.5 (default: origin)."),
    empty: str = typer.Option("skip", help="Groups without a relevant item: skip, zero or one."),
    beta_prime: Optional[str] = typer.Option(None, "--beta-prime", help=BETA_PRIME_HELP),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the 60/20/20 query split of a single file."),
):
    """Measure the Pareto front on a split: writes front.json and front.png."""
    from ..evaluation.front import front_job

    temperature = _temperature(beta_prime)
    front = front_job(
        model, data, out, split, grid, grid_kind, k, floats(reference, "--reference"), empty, split_seed, temperature
    )
    print_front(front)
    typer.echo(f"wrote {out / 'front.json'} and {out / 'front.png'}")


def _temperature(text: Optional[str]):
    t = floats(text, "--beta-prime")
    return t[0] if t is not None and len(t) == 1 else t


def print_front(front: dict):
    names = front["objectives"]
    typer.echo("  w" + " " * (8 * len(names) - 1) + "".join(f"{n[:12]:>14}" for n in names) + f"{'main':>10}")
    for w, p, m in zip(front["weights"], front["points"], front["main_ndcg"]["values"]):
        typer.echo("  " + " ".join(f"{x:6.3f} " for x in w) + "".join(f"{x:14.4f}" for x in p) + f"{m:10.4f}")
    typer.echo(
        "  base"
        + " " * (8 * len(names) - 3)
        + "".join(f"{x:14.4f}" for x in front["base_point"])
        + f"{front['base_main_ndcg']:10.4f}"
    )
    typer.echo(
        f"hypervolume {front['hypervolume']:.4f} (base point alone {front['base_hypervolume']:.4f}); "
        f"main NDCG@10 {front['main_ndcg']['mean']:.4f} +- {front['main_ndcg']['std']:.4f} "
        f"(base {front['base_main_ndcg']:.4f})"
    )


@friendly
def demo(
    out: Path = typer.Option(Path("cosdpo-demo"), help="Output folder."),
    queries: int = typer.Option(1000, help="Synthetic queries."),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
):
    """Synthetic data -> base ranker -> Weight-COS-DPO on two objectives -> front on the test split."""
    from ..demo import run_demo

    r = run_demo(out, queries=queries, seed=seed, progress=progress)
    f = r["front"]
    typer.echo("")
    print_front(f)
    typer.echo("")
    typer.echo(f"{'':28}{'base model':>14}{'Weight-COS-DPO':>18}")
    typer.echo(f"{'hypervolume (test)':28}{f['base_hypervolume']:14.4f}{f['hypervolume']:18.4f}")
    typer.echo(
        f"{'main NDCG@10':28}{f['base_main_ndcg']:14.4f}{f['main_ndcg']['mean']:11.4f} +- {f['main_ndcg']['std']:.4f}"
    )
    typer.echo(f"{'training seconds':28}{r['base_train_seconds']:14.1f}{r['finetune_train_seconds']:18.1f}")
    typer.echo(f"total {r['total_seconds']:.1f} s; files:")
    for name, p in r["paths"].items():
        typer.echo(f"  {name:11} {p}")


@ltr_app.command("predict")
@friendly
def ltr_predict(
    model: Path = typer.Option(..., help="A ranker folder, or an .onnx file from ltr export."),
    data: Path = typer.Option(..., "--data", help="A LETOR file (labels are read and ignored)."),
    out: Path = typer.Option(..., "--out", help="Scores file: one score per line, in the input's row order."),
    weights: Optional[str] = typer.Option(None, help="The trade-off w, e.g. 0.3,0.7 (conditioned rankers)."),
    beta: Optional[str] = typer.Option(None, "--beta-prime", "--beta", help=BETA_PRIME_HELP),
    backend: str = typer.Option("torch", help="torch, or onnx (exported in memory; a .onnx --model is always onnx)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Score every row of a LETOR file under w, one score per line, as LightGBM and RankLib write them."""
    from ..atomic import atomic_file
    from ..serving import load_scorer, predict_file

    scorer = load_scorer(model, backend)
    scores = predict_file(scorer, data, floats(weights, "--weights"), _temperature(beta), progress=progress)
    with atomic_file(out, "w") as f:
        f.writelines(f"{s:.9g}\n" for s in scores)
    typer.echo(f"wrote {len(scores)} scores to {out}")


@ltr_app.command("export")
@friendly
def ltr_export(
    model: Path = typer.Option(..., help="A ranker folder."),
    out: Path = typer.Option(..., "--out", help="The file to write, e.g. ranker.onnx."),
    format: str = typer.Option("onnx", "--format", help="onnx (the only format)."),
):
    """Write a ranker as ONNX with w and beta' as inputs, for ONNX Runtime or any ONNX server."""
    from ..models.ranker import load_ranker
    from ..serving import export_onnx

    if format != "onnx":
        raise ValueError(f"--format must be onnx, got {format!r}")
    ranker = load_ranker(model)
    export_onnx(ranker, out)
    conditions = ", weights, beta" if hasattr(ranker, "base") else ""
    typer.echo(f"wrote {out}: inputs features (batch, items, {len(ranker.schema.inputs)}), mask{conditions}")
