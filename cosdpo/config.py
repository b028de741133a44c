"""Configs as data: option fields, config files and the recipes shipped in the package.

Every job has one config dataclass; each of its fields is declared once,
with ``option(default, help, ...)``, and that declaration is the command-line
option (``cli/options.py`` builds it), the key of a config file and the row
of docs/configuration.md. A run is a config file (or a recipe) plus
command-line overrides; the resolved values are written to ``run.yaml`` in
the run's folder, and ``--config run.yaml`` repeats the run.

This module imports nothing else of the package, so models, data and
training may all declare their options with it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from importlib import resources
from pathlib import Path

import yaml

RUN_FILE = "run.yaml"
PANELS = ("Data and output", "Method", "Model", "Training", "Evaluation", "Runtime", "Serving", "Experimental")


def option(
    default=dataclasses.MISSING,
    help: str = "",
    *,
    choices=None,
    panel: str = "Training",
    cli=True,
    parse=None,
    default_factory=dataclasses.MISSING,
):
    """A config field with its help line.

    ``choices``: the allowed values (checked by ``check_choices``);
    ``panel``: the group it is listed under in ``--help``; ``cli=False``: a
    config-file key only; ``parse``: turns the command line's text into the
    value (comma-separated lists are parsed from the field's type).
    """
    if panel not in PANELS:
        raise ValueError(f"unknown panel {panel!r}")
    meta = {"help": help, "choices": tuple(choices) if choices else None, "panel": panel, "cli": cli, "parse": parse}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def check_choices(cfg) -> None:
    """Every field declared with ``choices`` holds one of them."""
    for f in dataclasses.fields(cfg):
        allowed = f.metadata.get("choices")
        if allowed and getattr(cfg, f.name) not in allowed:
            raise ValueError(f"{f.name} must be one of {', '.join(map(str, allowed))}; got {getattr(cfg, f.name)!r}")


def check_finite(cfg) -> None:
    """No float option (or list of floats) holds NaN or infinity: such a value trains a NaN model."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{f.name} must be finite, got {value!r}")


def field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _plain(v):
    """A value as YAML/JSON has it (tuples become lists)."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def to_dict(cfg) -> dict:
    """The config as plain YAML/JSON values."""
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _coerce(value, hint):
    """A value read from a file, as the field's type wants it (lists become tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, args[0])
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args else None
        return tuple(_coerce(v, inner) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls, values: dict, source: str = "the config"):
    """Build ``cls`` from ``values``; an unknown key names ``source`` and the known keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; known: {', '.join(sorted(names))}")
    hints = field_types(cls)
    return cls(**{k: _coerce(v, hints[k]) for k, v in values.items()})


def read_config(path) -> dict:
    """A config file's values: YAML (``.yaml``/``.yml``) or TOML (``.toml``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    text = path.read_text(encoding="utf-8")
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{path}: not a valid {'TOML' if path.suffix == '.toml' else 'YAML'} file: {str(exc).splitlines()[0]}"
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file holds option: value lines, got a {type(values).__name__}")
    return values


def write_run_config(path, command: str, values: dict) -> None:
    """``run.yaml``: the command and every resolved value, which ``--config`` reads back."""
    from .atomic import atomic_file

    header = (
        f"# The resolved config of this run. Repeat it with:\n"
        f"#   cosdpo {command} --config {Path(path).name} --out NEW_FOLDER\n"
    )
    body = yaml.safe_dump({"command": command} | values, sort_keys=False, default_flow_style=None, width=100)
    with atomic_file(path) as f:
        f.write((header + body).encode())


def comparison_values(cfg) -> dict:
    """A comparison's options for run.yaml: its training settings and its own fields, flat."""
    own = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if "help" in f.metadata}
    return to_dict(cfg.train) | own


# Recipes: config files shipped in cosdpo/recipes, each naming its command and what it is for.


def _recipe_dir():
    return resources.files("cosdpo") / "recipes"


def recipes() -> dict[str, dict]:
    """name -> the recipe's values (with its ``command`` and ``description``)."""
    out = {}
    for entry in sorted(_recipe_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            out[entry.name[:-5]] = yaml.safe_load(entry.read_text(encoding="utf-8"))
    return out


def load_recipe(name: str) -> dict:
    """A recipe's values by name (or a path to a config file)."""
    found = recipes()
    if name in found:
        return dict(found[name])
    if Path(name).is_file():
        return read_config(name)
    raise ValueError(f"unknown recipe {name!r}; `cosdpo recipes` lists them: {', '.join(found)}")


def redefault(cls, name: str, default):
    """The field ``name`` of ``cls`` with another default and the same help (a job that needs other sizes)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=default, metadata=f.metadata)
