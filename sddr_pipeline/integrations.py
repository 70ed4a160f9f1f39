"""Integrations as ``sddr`` sub-commands: the spec an integration declares, and the
argparse wiring that turns every registered spec into a sub-command.

Built-in specs are registered by :mod:`sddr_pipeline.plugins`; third parties publish an
:class:`IntegrationSpec` through the ``sddr_pipeline.integrations`` entry-point group. A
sub-command's arguments are added only when that sub-command is parsed, so ``sddr --help``
imports no integration module (nor open3d, pycolmap, torch), and an integration whose
module is broken breaks only its own sub-command.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .registry import INTEGRATIONS, import_object

log = logging.getLogger(__name__)
AddArguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class IntegrationSpec:
    """One ``sddr`` sub-command.

    ``name`` is the sub-command, ``help`` its line in ``sddr --help``. ``add_arguments``
    (a function, or a ``"module:function"`` string imported on first use) adds the
    sub-command's arguments to its parser and sets ``func`` (``func(args) -> int``, the exit
    status) with ``parser.set_defaults``.
    """

    name: str
    help: str
    add_arguments: AddArguments | str

    def arguments_adder(self) -> AddArguments:
        """``add_arguments`` as a function (importing its module if it is a string)."""
        return import_object(self.add_arguments) if isinstance(self.add_arguments, str) else self.add_arguments


def integration_specs() -> list[IntegrationSpec]:
    """Every registered integration: built-ins in their order, then entry points by name.

    An entry point that cannot be loaded, or is not an :class:`IntegrationSpec`, is skipped
    with a warning naming it, so one broken third-party package cannot take down ``sddr``.
    """
    specs = []
    for name in INTEGRATIONS:
        try:
            spec = INTEGRATIONS.get(name)
        except Exception as exc:
            log.warning("integration %r is skipped: it failed to load (%s: %s)", name, type(exc).__name__, exc)
            continue
        if not isinstance(spec, IntegrationSpec):
            log.warning("integration %r is skipped: it is a %s, not an sddr_pipeline.integrations.IntegrationSpec",
                        name, type(spec).__name__)
            continue
        specs.append(spec)
    return specs


class _DeferredParser(argparse.ArgumentParser):
    """A sub-command parser that asks its integration for its arguments on first use
    (parsing, help or usage) rather than when ``sddr``'s parser is built."""

    def __init__(self, add_arguments: Callable[[], AddArguments], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pending: Callable[[], AddArguments] | None = add_arguments

    def _complete(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending()(self)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def add_arguments(subparsers: Any) -> None:
    """Add one sub-command per registered integration to an argparse sub-parser set
    (``parser.add_subparsers()``); each sets ``func`` to its entry point."""
    for spec in integration_specs():
        placeholder = subparsers.add_parser(spec.name, help=spec.help)
        subparsers.choices[spec.name] = _DeferredParser(spec.arguments_adder, prog=placeholder.prog)


__all__ = ["AddArguments", "IntegrationSpec", "add_arguments", "integration_specs"]
