"""Name -> factory registries for predictors and integrations, extendable through entry points.

Built-ins register themselves with :meth:`Registry.register`; third-party packages add
their own without forking by declaring an entry point in their ``pyproject.toml``::

    [project.entry-points."sddr_pipeline.predictors"]
    mymodel = "my_pkg.depth:MyPredictorFactory"

after which ``--predictor mymodel:<arg>`` works everywhere a spec string is accepted.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from short names to factories, completed lazily from an entry-point group.

    Factories are stored as callables or as ``"module:attr"`` strings that are imported on
    first use, so optional heavy dependencies (onnxruntime, ray, open3d, ...) are only
    imported when their entry is actually used.
    """

    def __init__(self, group: str, what: str) -> None:
        self.group = group
        self.what = what
        self._items: dict[str, Callable[..., T] | str] = {}
        self._entry_points_loaded = False

    def register(self, name: str, factory: Callable[..., T] | str, *, override: bool = False) -> None:
        if name in self._items and not override:
            raise RegistryError(f"{self.what} {name!r} is already registered")
        self._items[name] = factory

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.value

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> Callable[..., T]:
        self._load_entry_points()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or 'none'} "
                f"(third parties add more through the entry-point group {self.group!r})"
            )
        factory = self._items[name]
        if isinstance(factory, str):
            factory = _import_object(factory)
            self._items[name] = factory
        return factory

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items


def _import_object(target: str) -> Callable:
    import importlib

    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


PREDICTORS: Registry = Registry("sddr_pipeline.predictors", "predictor")
INTEGRATIONS: Registry = Registry("sddr_pipeline.integrations", "integration")
