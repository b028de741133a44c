"""Command-line options generated from the config dataclasses.

A small generator over typer rather than a second argument library: typer
already gives the project's commands their help pages and shell behaviour,
and all a config needs on top is one option per dataclass field and the
layering of recipe < config file < command line.

A generated command takes ``--recipe NAME`` and ``--config FILE``, then
every field as an option; only options typed on the command line override
the files, so a flag left at its default never undoes a recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import typer

from ..config import PANELS, field_types, load_recipe, read_config
from .common import friendly


@dataclass
class Input:
    """A command's input that is no config field (data paths, the base model folder)."""

    name: str
    help: str
    required: bool = True
    recorded: bool = True  # written to run.yaml and read from config files (False: --out, --resume, ...)
    flag: bool = False  # a --name/--no-name switch
    default: object = None
    argument: bool = False  # positional (``cosdpo serve MODEL_DIR``), not --name

    @property
    def shown(self) -> str:
        return self.name.upper() if self.argument else "--" + self.name.replace("_", "-")


RECIPE = Input("recipe", "Start from a named recipe (`cosdpo recipes` lists them).", required=False, recorded=False)
CONFIG = Input(
    "config",
    "A YAML or TOML file of option: value lines (a run's run.yaml repeats it); options typed here override it.",
    required=False,
    recorded=False,
)
OUT = Input("out", "Output folder.", recorded=False)
RESUME = Input(
    "resume",
    "Continue the interrupted run in --out from its checkpoint.",
    required=False,
    recorded=False,
    flag=True,
    default=False,
)
OVERWRITE = Input(
    "overwrite", "Replace what --out already holds.", required=False, recorded=False, flag=True, default=False
)


# every generated command, for docs/configuration.md: (command, inputs, [(field, hint, choices)])
REGISTRY: list[tuple[str, list[Input], list]] = []


def flag_name(f: dataclasses.Field) -> str:
    cli = f.metadata.get("cli", True)
    return cli if isinstance(cli, str) else "--" + f.name.replace("_", "-")


def _inner(hint):
    """(base type, is a tuple) of a field's annotation, Optional stripped."""
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def parse_text(f: dataclasses.Field, hint, text):
    """The command line's text as the field's value."""
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse(text)
    base, is_tuple = _inner(hint)
    if not is_tuple or not isinstance(text, str):
        return text
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if base is float:
        try:
            return tuple(float(s) for s in parts)
        except ValueError:
            raise ValueError(f"{flag_name(f)} must be comma-separated numbers, got {text!r}") from None
    return tuple(parts)


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _field_parameter(f: dataclasses.Field, hint, choices=None) -> inspect.Parameter:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    base, is_tuple = _inner(hint)
    panel = meta.get("panel", "Training")
    help_text = meta.get("help", "")
    choices = choices or meta.get("choices")
    kwargs = dict(help=help_text, rich_help_panel=panel, show_default=default is not None)
    if base is bool and not is_tuple:
        name = flag_name(f)
        info = typer.Option(default, f"{name}/--no-{name[2:]}", **kwargs)
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=bool)
    if is_tuple or isinstance(default, dict) or meta.get("parse") is not None:
        # only typed options are read (see config_command), so the default is shown, never used
        annotation, value = Optional[str], None if default is None else _shown(default)
    elif choices:  # checked by the config (one line, like every other bad value), listed in the help
        annotation, value = Optional[str], default
        kwargs["metavar"] = "|".join(str(c) for c in choices)
    else:
        annotation, value = Optional[base], default
    info = typer.Option(value, flag_name(f), **kwargs)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _input_parameter(spec: Input) -> inspect.Parameter:
    name = spec.shown
    if spec.argument:
        info = typer.Argument(..., help=spec.help, show_default=False)
        return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=str)
    if spec.flag:
        info = typer.Option(bool(spec.default), name, help=spec.help, rich_help_panel="Data and output")
        return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=bool)
    info = typer.Option(
        spec.default,
        name,
        help=spec.help + ("" if not spec.required else " [required]"),
        rich_help_panel="Data and output",
        show_default=spec.default is not None,
    )
    return inspect.Parameter(
        spec.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=info,
        annotation=Optional[type(spec.default)] if spec.default is not None else Optional[str],
    )


def config_command(
    app: typer.Typer,
    name: str,
    command: str,
    sections: dict[str, type],
    inputs: list[Input],
    run: Callable,
    help: str,
    choices: dict | None = None,
    hide: tuple[str, ...] = (),
    accepts: tuple[str, ...] = (),
):
    """Register ``name`` on ``app``: options for ``inputs`` and every field of ``sections``.

    ``run(inputs: dict, values: dict[section, dict])`` builds the configs
    (``config.from_dict``) and does the work; ``command`` ("ltr finetune") is what run.yaml and recipes name.
    ``choices`` narrows a field's allowed values on this command; fields in
    ``hide`` are config-file keys only here. ``accepts`` names other commands whose
    recipes and run.yaml files this one reads too (a comparison starts from a fine-tuning recipe).
    """
    choices = choices or {}
    owner, fields_by_name = {}, {}
    for section, cls in sections.items():
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:  # a plain field (a nested config, a runtime flag): no option
                continue
            if f.name in owner:
                raise TypeError(f"{command}: option {f.name} declared by two sections")
            owner[f.name], fields_by_name[f.name] = section, (f, hints[f.name])
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    params += [_input_parameter(spec) for spec in (RECIPE, CONFIG, *inputs)]
    shown = [
        (f, hint) for name, (f, hint) in fields_by_name.items() if f.metadata.get("cli", True) and name not in hide
    ]
    shown.sort(key=lambda fh: PANELS.index(fh[0].metadata.get("panel", "Training")))  # panels in a fixed order
    params += [_field_parameter(f, hint, choices.get(f.name)) for f, hint in shown]
    REGISTRY.append((command, inputs, [(f, hint, choices.get(f.name)) for f, hint in shown]))

    @friendly
    def callback(**kwargs):
        ctx = kwargs.pop("ctx")
        recipe, config = kwargs.pop("recipe"), kwargs.pop("config")
        values: dict = {}
        for source, got in (
            (f"recipe {recipe}", recipe and load_recipe(recipe)),
            (str(config), config and read_config(config)),
        ):
            if not got:
                continue
            got = dict(got)
            made_for = got.pop("command", command)
            got.pop("description", None)
            if made_for != command and made_for not in accepts:
                raise ValueError(f"{source} is for `cosdpo {made_for}`, not `cosdpo {command}`")
            values |= got
        # by name: typer may run on its own copy of click, whose ParameterSource is another class
        typed = {k for k in kwargs if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"}
        for key in typed:
            if key in fields_by_name:
                f, hint = fields_by_name[key]
                values[key] = parse_text(f, hint, kwargs[key])
            elif any(spec.name == key and spec.recorded for spec in inputs):
                values[key] = kwargs[key]
        given = {}
        for spec in inputs:
            if spec.recorded:
                given[spec.name] = values.pop(spec.name, None if not spec.flag else spec.default)
                if given[spec.name] is None:
                    given[spec.name] = spec.default
            else:
                given[spec.name] = kwargs[spec.name]
            if spec.required and given[spec.name] is None:
                raise ValueError(
                    f"--{spec.name.replace('_', '-')} is required (on the command line or as "
                    f"`{spec.name}:` in the config file)"
                )
        unknown = sorted(set(values) - set(owner))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for `cosdpo {command}`")
        for key in hide:
            if key in typed:
                raise ValueError(f"{flag_name(fields_by_name[key][0])} is not an option of `cosdpo {command}`")
        for key, allowed in choices.items():
            if key in values and values[key] not in allowed:
                raise ValueError(
                    f"{key} must be one of {', '.join(allowed)} for `cosdpo {command}`; got {values[key]!r}"
                )
        configs = {section: {k: v for k, v in values.items() if owner[k] == section} for section in sections}
        return run(given, configs)

    callback.__signature__ = inspect.Signature(params)
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = help
    callback.__name__ = name.replace("-", "_")
    app.command(name, help=help)(callback)
    return callback
