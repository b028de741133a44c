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
    lengths: str = typer.Option(
        "short", help="List lengths: short (4-120 documents a query) or mslr (MSLR-WEB30K's: 1-1,251, mean ~120)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the fold files --out already holds."),
):
    """Write a synthetic MSLR-shaped Fold directory (136 features, 5 conflicting objectives)."""
    from ..data.synthetic import LENGTHS, write_fold

    if lengths not in LENGTHS:
        raise ValueError(f"--lengths must be one of {', '.join(LENGTHS)}, got {lengths!r}")
    path = write_fold(out, queries, seed, overwrite, **LENGTHS[lengths])
    typer.echo(f"wrote {path}/train.txt, vali.txt, test.txt ({queries} queries)")
