"""Lazy attributes of a package: names imported on first use, so importing the package stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(package: str, names: Mapping[str, str], modules: Iterable[str] = (), *,
                    also: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps a public name to the module that
    defines it; ``modules`` are subpackages returned themselves; ``also`` are names the package
    defines itself (listed by ``dir``)."""
    modules = set(modules)
    public = sorted({*names, *modules, *also})

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        msg = f"module {package!r} has no attribute {name!r}"
        raise AttributeError(msg)

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__
