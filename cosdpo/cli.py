"""The ``cosdpo`` command: a thin layer over the Python API."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Conditioned one-shot multi-objective fine-tuning (COS-DPO).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)
ltr_app = typer.Typer(help="Learning to rank: base ranker, Weight-COS-DPO fine-tuning, fronts.",
                      no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(ltr_app, name="ltr")

USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError)


def friendly(fn):
    """Bad input ends in one clear line on stderr and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _names(text: Optional[str]) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else ()


def _floats(text: Optional[str], what: str):
    if text is None:
        return None
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


DataOpt = typer.Option(..., "--data", help="A Fold directory (train.txt, vali.txt, test.txt) or one LETOR file "
                                           "(split 60/20/20 by query).")
OutOpt = typer.Option(..., "--out", help="Output folder.")
BaseOpt = typer.Option(..., "--base", help="Folder of the base ranker (from train-base).")


@data_app.command("synth")
@friendly
def data_synth(out: Path = OutOpt, queries: int = typer.Option(1000, help="Number of queries."),
               seed: int = typer.Option(0, help="Random seed.")):
    """Write a synthetic MSLR-shaped Fold directory (136 features, 5 conflicting objectives)."""
    from .data.synthetic import write_fold

    path = write_fold(out, queries, seed)
    typer.echo(f"wrote {path}/train.txt, vali.txt, test.txt ({queries} queries)")


def _train_options(epochs, batch_size, lr, seed, patience, checkpoint_every, d_model, layers, heads, dropout,
                   split_seed, progress, lr_schedule="constant", val_every=1, warmup_steps=0):
    opts = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, patience=patience, lr_schedule=lr_schedule,
                val_every=val_every, warmup_steps=warmup_steps,
                checkpoint_every=checkpoint_every, n_layers=layers, n_heads=heads, dropout=dropout,
                split_seed=split_seed, progress=progress)
    if d_model is not None:
        opts["d_model"] = d_model
    return opts


COMMON = dict(
    epochs=typer.Option(20, help="Epochs (an upper bound with early stopping)."),
    batch_size=typer.Option(32, "--batch-size", help="Query groups per step (over all processes)."),
    lr=typer.Option(1e-3, help="AdamW learning rate."),
    lr_schedule=typer.Option("constant", "--lr-schedule", help="constant, or cosine: decay to 0 over the planned "
                                                                 "steps (the last model is settled, not mid-jump)."),
    warmup_steps=typer.Option(0, "--warmup-steps", help="Ramp the lr linearly from 0 over the first N steps."),
    seed=typer.Option(0, help="Seed of initialisation, batch order and sampled weights."),
    patience=typer.Option(5, help="Stop after this many validations without improvement (0: never)."),
    val_every=typer.Option(1, "--val-every", help="Validate every N epochs (and at the end); the front on vali "
                                                  "can cost as much as an epoch of training."),
    checkpoint_every=typer.Option(0, "--checkpoint-every", help="Also checkpoint every N steps (0: epoch ends)."),
    layers=typer.Option(2, help="Transformer layers."),
    heads=typer.Option(4, help="Attention heads."),
    dropout=typer.Option(0.1, help="Dropout."),
    split_seed=typer.Option(0, "--split-seed", help="Seed of the 60/20/20 query split of a single file."),
    resume=typer.Option(False, "--resume", help="Continue the interrupted run in --out from its checkpoint."),
    overwrite=typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    progress=typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
)


@ltr_app.command("train-base")
@friendly
def ltr_train_base(
    data: Path = DataOpt, out: Path = OutOpt,
    exclude: Optional[str] = typer.Option(None, help="Objectives you will fine-tune on, e.g. f44,f45: in a "
                                                     "non-MSLR file their features leave the input."),
    d_model: Optional[int] = typer.Option(128, "--d-model", help="Transformer width."),
    max_label: int = typer.Option(4, "--max-label", help="Labels must be integers 0..max-label."),
    epochs: int = COMMON["epochs"], batch_size: int = COMMON["batch_size"], lr: float = COMMON["lr"],
    lr_schedule: str = COMMON["lr_schedule"], warmup_steps: int = COMMON["warmup_steps"],
    seed: int = COMMON["seed"], patience: int = COMMON["patience"],
    val_every: int = COMMON["val_every"], checkpoint_every: int = COMMON["checkpoint_every"],
    layers: int = COMMON["layers"], heads: int = COMMON["heads"], dropout: float = COMMON["dropout"],
    split_seed: int = COMMON["split_seed"], resume: bool = COMMON["resume"], overwrite: bool = COMMON["overwrite"],
    progress: bool = COMMON["progress"],
):
    """Train the base ranker (ListNet on the relevance label)."""
    from .training.ltr import BaseConfig, train_base

    cfg = BaseConfig(exclude=_names(exclude), max_label=max_label,
                     **_train_options(epochs, batch_size, lr, seed, patience, checkpoint_every, d_model, layers,
                                      heads, dropout, split_seed, progress, lr_schedule=lr_schedule,
                                      val_every=val_every, warmup_steps=warmup_steps))
    _, metrics = train_base(data, out, cfg, resume=resume, overwrite=overwrite)
    typer.echo(f"base ranker in {out}: validation NDCG@10 {metrics['val_ndcg']:.4f}, "
               f"{metrics['train_seconds']:.1f} s, {metrics['epochs_run']} epochs")


@ltr_app.command("finetune")
@friendly
def ltr_finetune(
    data: Path = DataOpt,
    base: Path = BaseOpt,
    objectives: str = typer.Option(..., help="Comma-separated: MSLR names (quality1, quality2, "
                                             "query_url_clicks, url_clicks, dwell_time) or feature indices (f44)."),
    out: Path = OutOpt,
    alpha: float = typer.Option(0.3, help="Dirichlet concentration of the w sampled per step (small: "
                                               "more corners, wider front)."),
    penalty: float = typer.Option(0.0, help="lambda, weight of the cosine penalty (>0 narrowed the front "
                                                 "in our measurements)."),
    beta: float = typer.Option(1.0, help="DPO temperature."),
    param: str = typer.Option("augment", help="scratch (a new network on features and w) or augment (base + correction)."),
    method: str = typer.Option("wcos", help="wcos (Weight-COS-DPO, one temperature) or tcos "
                                            "(Temperature-COS-DPO: also conditioned on per-objective temperatures)."),
    beta_range: str = typer.Option("0.1,10", "--beta-range", help="tcos: each step draws beta_k log-uniform on "
                                                                   "LO,HI per objective."),
    transform: str = typer.Option("softmax", help="Label transform T of the loss: softmax or l1."),
    grades: Optional[str] = typer.Option(None, help="Grade transforms per objective, e.g. "
                                                    "url_clicks=log2,quality1=linear:0:255 (see docs)."),
    d_model: Optional[int] = typer.Option(64, "--d-model", help="Width of the conditioned network."),
    epochs: int = COMMON["epochs"], batch_size: int = COMMON["batch_size"], lr: float = COMMON["lr"],
    lr_schedule: str = COMMON["lr_schedule"], warmup_steps: int = COMMON["warmup_steps"],
    seed: int = COMMON["seed"], patience: int = COMMON["patience"],
    val_every: int = COMMON["val_every"], checkpoint_every: int = COMMON["checkpoint_every"],
    layers: int = COMMON["layers"], heads: int = COMMON["heads"], dropout: float = COMMON["dropout"],
    split_seed: int = COMMON["split_seed"], resume: bool = COMMON["resume"], overwrite: bool = COMMON["overwrite"],
    progress: bool = COMMON["progress"],
):
    """Fine-tune one ranker conditioned on w for every trade-off (Weight-COS-DPO)."""
    from .data.objectives import parse_grade_overrides
    from .training.ltr import FinetuneConfig, finetune

    cfg = FinetuneConfig(objectives=_names(objectives), grades=parse_grade_overrides(grades), alpha=alpha,
                         penalty=penalty, beta=beta, param=param, transform=transform, method=method,
                         beta_range=tuple(_floats(beta_range, "--beta-range")),
                         **_train_options(epochs, batch_size, lr, seed, patience, checkpoint_every, d_model, layers,
                                          heads, dropout, split_seed, progress, lr_schedule=lr_schedule,
                                      val_every=val_every, warmup_steps=warmup_steps))
    _, metrics = finetune(data, base, out, cfg, resume=resume, overwrite=overwrite)
    typer.echo(f"conditioned ranker in {out}: validation hypervolume {metrics['val_hypervolume']:.4f}, "
               f"{metrics['train_seconds']:.1f} s, {metrics['trainable_params']} trainable parameters")


@ltr_app.command("compare")
@friendly
def ltr_compare(
    data: Path = DataOpt,
    base: Path = BaseOpt,
    objectives: str = typer.Option(..., help="Comma-separated objectives, as for finetune."),
    out: Path = OutOpt,
    methods: str = typer.Option("wcos,ls,soup,modpo", help="Any of wcos (Weight-COS-DPO), ls (DPO-LS), soup "
                                                            "(DPO Soup), modpo (MO-DPO)."),
    grid: Optional[int] = typer.Option(None, help="Grid size, as for front (K=2: 11 points)."),
    grid_kind: str = typer.Option("lattice", "--grid-kind", help="K>2: lattice or dirichlet."),
    alpha: float = typer.Option(0.3, help="wcos: Dirichlet concentration."),
    penalty: float = typer.Option(0.0, help="wcos: lambda of the cosine penalty (the baselines use none)."),
    beta: float = typer.Option(1.0, help="DPO temperature (all methods)."),
    param: str = typer.Option("augment", help="scratch or augment (all methods)."),
    d_model: Optional[int] = typer.Option(64, "--d-model", help="Width of every fine-tuned network."),
    epochs: int = COMMON["epochs"], batch_size: int = COMMON["batch_size"], lr: float = COMMON["lr"],
    lr_schedule: str = COMMON["lr_schedule"], warmup_steps: int = COMMON["warmup_steps"],
    seed: int = COMMON["seed"], patience: int = COMMON["patience"],
    val_every: int = COMMON["val_every"], layers: int = COMMON["layers"], heads: int = COMMON["heads"],
    dropout: float = COMMON["dropout"], split_seed: int = COMMON["split_seed"], overwrite: bool = COMMON["overwrite"],
    progress: bool = COMMON["progress"],
):
    """Train every method on the same grid and budget; writes compare.json and compare.png."""
    from .training.compare import CompareConfig, compare, format_table
    from .training.ltr import FinetuneConfig

    train = FinetuneConfig(objectives=_names(objectives), alpha=alpha, penalty=penalty, beta=beta, param=param,
                           **_train_options(epochs, batch_size, lr, seed, patience, 0, d_model, layers, heads,
                                            dropout, split_seed, progress, lr_schedule=lr_schedule,
                                            val_every=val_every, warmup_steps=warmup_steps))
    result = compare(data, base, out, CompareConfig(train, _names(methods), grid, grid_kind, overwrite))
    typer.echo(format_table(result))
    typer.echo(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")


@ltr_app.command("front")
@friendly
def ltr_front(
    model: Path = typer.Option(..., help="Folder of a fine-tuned ranker."),
    data: Path = DataOpt, out: Path = OutOpt,
    split: str = typer.Option("test", help="test, vali, train, or all (the whole file/folder)."),
    grid: Optional[int] = typer.Option(None, help="Grid size: N evenly spaced weights for K=2 (default 11); "
                                                  "at most N points for K>2 (default 50)."),
    grid_kind: str = typer.Option("lattice", "--grid-kind", help="K>2: lattice or dirichlet."),
    k: int = typer.Option(10, help="NDCG cut-off."),
    reference: Optional[str] = typer.Option(None, help="Hypervolume reference point, e.g. 0.5,0.5 (default: "
                                                       "origin)."),
    empty: str = typer.Option("skip", help="Groups without a relevant item: skip, zero or one."),
    beta: Optional[float] = typer.Option(None, help="Serve at temperature beta' (default: the training one); "
                                                    "larger stays closer to the base model."),
    betas: Optional[str] = typer.Option(None, help="tcos models: one temperature per objective, e.g. 0.5,2."),
    split_seed: int = COMMON["split_seed"],
):
    """Measure the Pareto front on a split: writes front.json and front.png."""
    from .evaluation.front import front_job

    if beta is not None and betas is not None:
        raise ValueError("give --beta or --betas, not both")
    temperature = _floats(betas, "--betas") if betas is not None else beta
    front = front_job(model, data, out, split, grid, grid_kind, k, _floats(reference, "--reference"), empty,
                      split_seed, temperature)
    _print_front(front)
    typer.echo(f"wrote {out / 'front.json'} and {out / 'front.png'}")


def _print_front(front: dict):
    names = front["objectives"]
    typer.echo("  w" + " " * (8 * len(names) - 1) + "".join(f"{n[:12]:>14}" for n in names) + f"{'main':>10}")
    for w, p, m in zip(front["weights"], front["points"], front["main_ndcg"]["values"]):
        typer.echo("  " + " ".join(f"{x:6.3f} " for x in w) + "".join(f"{x:14.4f}" for x in p) + f"{m:10.4f}")
    typer.echo("  base" + " " * (8 * len(names) - 3) + "".join(f"{x:14.4f}" for x in front["base_point"])
               + f"{front['base_main_ndcg']:10.4f}")
    typer.echo(f"hypervolume {front['hypervolume']:.4f} (base point alone {front['base_hypervolume']:.4f}); "
               f"main NDCG@10 {front['main_ndcg']['mean']:.4f} +- {front['main_ndcg']['std']:.4f} "
               f"(base {front['base_main_ndcg']:.4f})")


@app.command("demo")
@friendly
def demo(out: Path = typer.Option(Path("cosdpo-demo"), help="Output folder."),
         queries: int = typer.Option(1000, help="Synthetic queries."), seed: int = typer.Option(0),
         progress: bool = COMMON["progress"]):
    """Synthetic data -> base ranker -> Weight-COS-DPO on two objectives -> front on the test split."""
    from .demo import run_demo

    r = run_demo(out, queries=queries, seed=seed, progress=progress)
    f = r["front"]
    typer.echo("")
    _print_front(f)
    typer.echo("")
    typer.echo(f"{'':28}{'base model':>14}{'Weight-COS-DPO':>18}")
    typer.echo(f"{'hypervolume (test)':28}{f['base_hypervolume']:14.4f}{f['hypervolume']:18.4f}")
    typer.echo(f"{'main NDCG@10':28}{f['base_main_ndcg']:14.4f}"
               f"{f['main_ndcg']['mean']:11.4f} +- {f['main_ndcg']['std']:.4f}")
    typer.echo(f"{'training seconds':28}{r['base_train_seconds']:14.1f}{r['finetune_train_seconds']:18.1f}")
    typer.echo(f"total {r['total_seconds']:.1f} s; files:")
    for name, p in r["paths"].items():
        typer.echo(f"  {name:11} {p}")


from .cli_llm import llm_app  # noqa: E402  (it takes friendly and the parsers from this module)

app.add_typer(llm_app, name="llm")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
