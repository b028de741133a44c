"""What every command shares: one-line errors and warnings, and the parsing of comma-separated lists."""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import typer

USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError)


def friendly(fn):
    """Bad input ends in one clear line on stderr and exit code 2, not a traceback; a warning is one
    ``warning:`` line, said once, not a source path and the line of code that raised it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        said = set()

        def say(message, category, filename, lineno, file=None, line=None):
            if str(message) not in said:
                said.add(str(message))
                typer.secho(f"warning: {message}", fg="yellow", err=True)

        with warnings.catch_warnings():
            warnings.showwarning = say
            try:
                return fn(*args, **kwargs)
            except USER_ERRORS as exc:
                typer.secho(f"error: {exc}", fg="red", err=True)
                raise typer.Exit(2) from None

    return wrapper


def names(text: Optional[str]) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else ()


def floats(text: Optional[str], what: str):
    if text is None:
        return None
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None
