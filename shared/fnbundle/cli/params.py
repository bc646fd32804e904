"""Command-line options generated from a training task's params model.

Key rule: a training task's options are written once, in its pydantic params model (name,
type, default, description, bounds); ``fnbundle train <task>`` and ``fnbundle jobs
submit`` read them from there, so a field added to the model is an option of both, with
its help and default, without touching the CLI. A field may name its flags in
``json_schema_extra={"cli": "--on/--off"}``; otherwise a boolean is ``--field/--no-field``
and every other field ``--field``.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

PARAMS = "params"  # the argument a decorated command receives the options in


def _flags(name: str, info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flags = extra.get("cli")
    if isinstance(flags, str):
        return flags
    option = "--" + name.replace("_", "-")
    return f"{option}/--no-{option[2:]}" if info.annotation is bool else option


def _help(name: str, info: FieldInfo) -> str:
    text = info.description or name.replace("_", " ").capitalize() + "."
    annotation = _unwrap(info.annotation)
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()
    if choices:
        text += f" One of: {', '.join(map(str, choices))}."
    if not info.is_required():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(map(str, default))
        if default not in (None, "", {}):  # None: the description says what happens
            text += f" (default: {default})"
    return text


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (an option left out is None anyway); a union of Literals is
    one Literal of all their choices."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        if all(typing.get_origin(a) is Literal for a in args):
            return Literal[tuple(c for a in args for c in typing.get_args(a))]
    return annotation


def _shape(info: FieldInfo) -> str:
    """How the command line spells a field: ``list`` (a,b), ``dict`` (k=v,k=v) or plain."""
    origin = typing.get_origin(_unwrap(info.annotation))
    return "list" if origin is list else "dict" if origin is dict else "plain"


def _cli_type(info: FieldInfo) -> Any:
    """What the command line parses before pydantic checks it: Literal choices, lists
    (comma-separated) and mappings (``key=value`` pairs, comma-separated) as text."""
    annotation = _unwrap(info.annotation)
    if typing.get_origin(annotation) is Literal or _shape(info) != "plain":
        return str
    return annotation


def _parse(value: Any, shape: str) -> Any:
    """A list or mapping option's text as the list or dict pydantic then checks."""
    if shape == "plain" or not isinstance(value, str):
        return value
    items = [item.strip() for item in value.split(",") if item.strip()]
    if shape == "list":
        return items
    pairs = [item.partition("=") for item in items]
    return {key.strip(): kind.strip() for key, _, kind in pairs}


def options(model: type[BaseModel]) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model``: required fields are required options;
    the others default to None, meaning "the model's default" (sent as nothing)."""
    out = []
    for name, info in model.model_fields.items():
        option = typer.Option(_flags(name, info), help=_help(name, info))
        if info.is_required():
            annotation: Any = Annotated[_cli_type(info), option]
            default: Any = inspect.Parameter.empty
        else:
            annotation, default = Annotated[_cli_type(info) | None, option], None
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=annotation))  # fmt: skip
    return out


def with_params(model: type[BaseModel]) -> Callable[..., Any]:
    """Decorate a command taking ``params: dict`` with ``model``'s fields as its options:
    ``params`` receives the options given, None ones left out (the model's defaults then
    apply wherever the params are checked: the trainer, or the gateway a job goes to)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name != PARAMS]  # fmt: skip
        generated = options(model)
        names = {p.name for p in generated}

        shapes = {name: _shape(info) for name, info in model.model_fields.items()}

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            params = {k: _parse(v, shapes[k]) for k, v in given.items() if v is not None}
            return command(**kwargs, **{PARAMS: params})

        required = [p for p in generated if p.default is inspect.Parameter.empty]
        optional = [p for p in generated if p.default is not inspect.Parameter.empty]
        parameters = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in (*required, *own, *optional)
        ]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        del run.__wrapped__  # typer must read the generated signature, not the command's
        return run

    return decorate
