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
    choices = (
        typing.get_args(info.annotation) if typing.get_origin(info.annotation) is Literal else ()
    )
    if choices:
        text += f" One of: {', '.join(map(str, choices))}."
    if not info.is_required():
        text += f" (default: {info.default})"
    return text


def _cli_type(info: FieldInfo) -> Any:
    """What the command line parses before pydantic checks it: Literal choices as text."""
    if typing.get_origin(info.annotation) is Literal:
        return str
    return info.annotation


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

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return command(**kwargs, **{PARAMS: {k: v for k, v in given.items() if v is not None}})

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
