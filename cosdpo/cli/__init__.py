"""The ``cosdpo`` command: a thin layer over the Python API.

``data`` and ``ltr`` (ranking), ``llm`` (alignment), ``serve``, ``recipes``
and the demo; each training command's options are generated from its config
dataclass (``options.py``).
"""

from __future__ import annotations

import typer

from .common import friendly
from .data import data_app
from .llm import llm_app
from .ltr import demo, ltr_app
from .serve import register as register_serve

app = typer.Typer(
    help="Conditioned one-shot multi-objective fine-tuning (COS-DPO).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.add_typer(ltr_app, name="ltr")
app.add_typer(llm_app, name="llm")
app.command("demo")(demo)
register_serve(app)


@app.command("recipes")
@friendly
def list_recipes(show: str = typer.Argument(None, help="A recipe's name: print its whole config.")):
    """List the named configs shipped with cosdpo (start from one with --recipe NAME)."""
    from ..config import load_recipe, recipes

    if show:
        import yaml

        typer.echo(yaml.safe_dump(load_recipe(show), sort_keys=False).rstrip())
        return
    found = recipes()
    width = max(len(n) for n in found)
    for name, values in found.items():
        typer.echo(f"{name:{width}}  cosdpo {values['command']:13}  {values.get('description', '')}")


def main():
    app()
