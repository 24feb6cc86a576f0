"""Values checked against the annotations of the function or dataclass that will receive them.

A run is described by plain values (Python keywords, ``--set K=V``, a config file) long before the
functions that use them run: a post-processing step after hours of embedding, a crop parameter on a
worker. Checking each value against its receiver's annotation up front turns ``out_size="big"`` into
"out_size must be an integer or None, got 'big'" at once, instead of a ``ValueError`` from deep inside
the run. Annotations are read as written (``Literal`` aliases, ``X | None``, ``Sequence[str]``);
anything this module cannot read is accepted, and the receiver checks it again.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = ["check_arguments", "check_fields", "describe", "matches"]


def _resolve(annotation: Any, module: str) -> Any:
    """An annotation as an object (string annotations are evaluated in their module), or None."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(vars(sys.modules[module])))  # noqa: S307 - the package's own annotations
    except Exception:  # noqa: BLE001 - a name only imported for type checking: not checked here
        return None


def matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (unknown annotations match everything)."""
    if annotation is None or annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (os.PathLike, "os.PathLike") or origin is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin in (cabc.Sequence, list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args, strict=True))
        return all(matches(v, args[0]) for v in value)
    if origin in (cabc.Mapping, dict):
        return isinstance(value, Mapping)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe(annotation: Any) -> str:
    """An annotation in words: ``"one of 'otsu', 'li'"``, ``"a number or None"``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return f"{text} or None" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (cabc.Sequence, list, tuple):
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin in (cabc.Mapping, dict):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    if annotation is os.PathLike:
        return "a path"
    return getattr(annotation, "__name__", str(annotation))


def _plural(text: str) -> str:
    return text.removeprefix("an ").removeprefix("a ") + "s" if text.startswith(("a ", "an ")) else text


def check_arguments(func: Callable[..., Any], values: Mapping[str, Any], where: str, *,
                    skip: tuple[str, ...] = ()) -> None:
    """Check keyword arguments for ``func`` now: every name is a parameter and every value fits its annotation.

    Raises
    ------
    ConfigError
        ``"<where>: unknown argument(s) [...]; <func> takes [...]"`` or ``"<where>: <name> must be
        <annotation in words>, got <value>"``.
    """
    parameters = {name: p for name, p in inspect.signature(func).parameters.items()
                  if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  and name not in skip}
    _check(values, {name: _resolve(p.annotation, func.__module__) for name, p in parameters.items()}, where,
           func.__name__)


def check_fields(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Check values for the fields of the dataclass ``cls`` now (names and annotations)."""
    annotations = {f.name: _resolve(f.type, cls.__module__) for f in dataclasses.fields(cls)}
    _check(values, annotations, where, cls.__name__)


def _check(values: Mapping[str, Any], annotations: Mapping[str, Any], where: str, receiver: str) -> None:
    unknown = sorted(set(values) - set(annotations))
    if unknown:
        msg = f"{where}: unknown parameter(s) {unknown}; {receiver} takes {sorted(annotations)}"
        raise ConfigError(msg)
    for name, value in values.items():
        annotation = annotations[name]
        if not matches(value, annotation):
            msg = f"{where}: {name} must be {describe(annotation)}, got {value!r}"
            raise ConfigError(msg)
