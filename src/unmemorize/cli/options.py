"""Command-line options generated from the config declarations (`unmemorize.config`), and the
configs built back from what was parsed, merged with a ``--config`` YAML file.

click rather than typer: the options are data (dataclass fields), and click builds commands
from data directly, where typer wants one hand-written function signature per command."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import click
from click.core import ParameterSource

from ..config import (
    METHOD_PARAMETERS, base_type, coerce, declaration, field_types, flag_name, from_mapping, read_yaml,
)


class FieldType(click.ParamType):
    """A value of one config field, converted by the same rule as a YAML value (`coerce`); a
    sequence field takes comma-separated values and may be repeated."""

    def __init__(self, item: dataclasses.Field, annotation: Any) -> None:
        self.item, self.annotation = item, annotation
        kind, _optional, self.sequence = base_type(annotation)
        words = declaration(item).words
        choices = declaration(item).choices
        self.name = ("NUMBER|" + "|".join(w.upper() for w in words)) if words \
            else "[" + "|".join(choices) + "]" if choices else {int: "INTEGER", float: "FLOAT"}.get(kind, "TEXT")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # A bad value raises the UserError a YAML file or a Python caller gets: one message.
        return coerce(self.item, self.annotation, value)


def _method_defaults(name: str) -> str:
    """' (default: npo 0.1, simnpo 2.5)' from the methods that declare the hyper-parameter."""
    from ..methods import METHODS

    found = [(method, f.default) for method, cls in sorted(METHODS.items()) if dataclasses.is_dataclass(cls)
             for f in dataclasses.fields(cls) if f.name == name]
    return " (default: " + ", ".join(f"{method} {value:g}" for method, value in found) + ")" if found else ""


def parameter(item: dataclasses.Field, annotation: Any) -> click.Parameter:
    """The click option (or argument) of one config field."""
    spec = declaration(item)
    kind, _optional, sequence = base_type(annotation)
    help_text = spec.help + (_method_defaults(item.name) if item.name in METHOD_PARAMETERS else "")
    if spec.argument:
        return click.Argument([item.name], required=spec.required, type=str)
    flag = flag_name(item)
    if kind is bool and not sequence:
        decl = f"{flag}/--{spec.negative}" if spec.negative else flag
        return click.Option([decl, item.name], default=item.default, show_default=bool(spec.negative),
                            help=help_text, is_flag=True)
    default = item.default
    return click.Option([flag, item.name], type=FieldType(item, annotation), default=default,
                        multiple=sequence, show_default=default not in (None, ()), help=help_text,
                        required=spec.required, metavar=spec.metavar)


def _help_order(cls: type) -> list[dataclasses.Field]:
    """The model first, then the class's own options, then those of the groups it shares."""
    own = set(cls.__dict__.get("__annotations__", {}))
    items = dataclasses.fields(cls)
    return sorted(items, key=lambda f: (f.name != "model", f.name not in own))


def parameters(classes: Iterable[type]) -> list[click.Parameter]:
    params, seen = [], set()
    for cls in classes:
        hints = field_types(cls)
        for item in _help_order(cls):
            if item.name not in seen:
                seen.add(item.name)
                params.append(parameter(item, hints[item.name]))
    return params


def _flatten(value: Any, item: dataclasses.Field) -> Any:
    """A repeated sequence option arrives as a tuple of tuples; no value at all is the default."""
    if not isinstance(value, tuple) or not value or not isinstance(value[0], tuple):
        return item.default if value == () else value
    return tuple(v for part in value for v in part)


def build_configs(ctx: click.Context, classes: tuple[type, ...], values: dict[str, Any],
                  yaml_path: str | None) -> tuple[list[Any], set[str]]:
    """The config objects of a command from its parsed values, with a ``--config`` YAML file's
    values under the options given on the command line. Also returns the names of the fields
    set explicitly (on the command line or in the file)."""
    fields_by_name = {item.name: item for cls in classes for item in dataclasses.fields(cls)}
    merged = {name: _flatten(value, fields_by_name[name]) for name, value in values.items() if name in fields_by_name}
    explicit = {name for name in merged if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    if yaml_path:
        from_file = from_mapping(classes, read_yaml(yaml_path), yaml_path)
        merged.update({name: value for name, value in from_file.items() if name not in explicit})
        explicit |= set(from_file)
    configs = [cls(**{item.name: merged[item.name] for item in dataclasses.fields(cls)}) for cls in classes]
    return configs, explicit
