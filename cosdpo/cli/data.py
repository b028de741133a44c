"""``cosdpo data ...``: make and inspect datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import friendly

data_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)


@data_app.command("synth")
@friendly
def data_synth(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    queries: int = typer.Option(1000, help="Number of queries."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Write a synthetic MSLR-shaped Fold directory (136 features, 5 conflicting objectives)."""
    from ..data.synthetic import write_fold

    path = write_fold(out, queries, seed)
    typer.echo(f"wrote {path}/train.txt, vali.txt, test.txt ({queries} queries)")
