"""Package attributes imported on first use (PEP 562), so importing a package stays light."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Mapping


def lazy_attributes(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose attribute ``name`` is
    ``table[name]`` = ``"module:attr"`` (``module`` may be relative to ``package``; without
    ``:attr`` the attribute has the same name). The first access imports the module and
    caches the value in ``namespace``, the package's ``globals()``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            module, _, attr = table[name].partition(":")
            value = getattr(import_module(module, package), attr or name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__
