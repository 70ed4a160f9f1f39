"""Settings read from files or option strings: a mapping whose keys must all be known.

Every loader of a dataclass from parsed YAML/JSON/options (refiner config, training
config, pipeline configs, predictor options) checks its keys here, so a typo is refused
with one message format that names the unknown key(s) and lists the known ones instead
of being silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping


def field_names(cls: type) -> frozenset[str]:
    """The field names of dataclass ``cls``: the keys a mapping may use to build it."""
    return frozenset(f.name for f in dataclasses.fields(cls))


def check_keys(
    values: Any,
    known: Iterable[str],
    *,
    what: str,
    where: str = "",
    noun: str = "key",
    error: type[Exception] = ValueError,
) -> dict[str, Any]:
    """``values`` as a new dict, after checking that it is a mapping with only ``known`` keys.

    ``what`` names the whole config (``"refiner config"``), ``where`` the dotted path of
    this mapping inside it (``"loss"``; "" at the top level), ``noun`` what a key is called
    there (``"option"``). Raises ``error`` such as
    ``training config: unknown key(s) loss.foo; known: alpha, full, grad`` or
    ``training config: loss must be a mapping, got int``.
    """
    if not isinstance(values, Mapping):
        raise error(f"{what}: {where + ' ' if where else ''}must be a mapping, got {type(values).__name__}")
    known = frozenset(known)
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        names = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise error(f"{what}: unknown {noun}(s) {names}; known: {', '.join(sorted(known))}")
    return dict(values)
