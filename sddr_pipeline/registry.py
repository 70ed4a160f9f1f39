"""Name -> object registries for predictors and integrations, extendable through entry points.

Built-ins register where they are defined (``@PREDICTORS.register("hf")`` on a factory, as
timm's ``@register_model`` does); each registry imports its built-in modules on first
lookup, so they are available by name without importing anything special, and importing
this module stays cheap. Third-party packages add their own without forking by declaring
an entry point in their ``pyproject.toml``::

    [project.entry-points."sddr_pipeline.predictors"]
    mymodel = "my_pkg.depth:from_spec"

    [project.entry-points."sddr_pipeline.integrations"]
    mytool = "my_pkg.cli:SPEC"          # an sddr_pipeline.integrations.IntegrationSpec

after which ``--predictor mymodel:<arg>`` works everywhere a spec string is accepted and
``sddr mytool`` is a sub-command. A built-in name wins over an entry point of the same name.
"""
from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Sequence, TypeVar, overload

if TYPE_CHECKING:
    from .integrations import IntegrationSpec
    from .predictors.base import PredictorFactory

T = TypeVar("T")
log = logging.getLogger(__name__)


class RegistryError(KeyError):
    """Unknown name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A mapping from short names to objects (factories, specs), completed lazily.

    On first lookup the registry imports its ``builtins`` modules (each registers its own
    entries) and then reads the entry-point group. Entries may be ``"module:attr"`` strings,
    imported on first :meth:`get`, so optional heavy dependencies (onnxruntime, ray,
    open3d, ...) are only imported when their entry is actually used.
    """

    def __init__(self, group: str, what: str, builtins: Sequence[str] = ()) -> None:
        self.group = group
        self.what = what
        self.builtins = tuple(builtins)
        self._items: dict[str, T | str] = {}
        self._loaded = False

    @overload
    def register(self, name: str, item: None = None, *, override: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T | str, *, override: bool = False) -> T | str: ...

    def register(self, name: str, item: T | str | None = None, *, override: bool = False) -> Any:
        """Register ``item`` under ``name``; without ``item``, a decorator that registers
        what it decorates. Registering the same object again is a no-op (a module imported
        twice); another object under a taken name is an error unless ``override``."""
        if item is None:
            return lambda obj: self.register(name, obj, override=override)
        if name in self._items and self._items[name] != item and not override:
            raise RegistryError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # before importing: a built-in module may look names up
        try:
            for module in self.builtins:
                import_module(module)
        except BaseException:
            self._loaded = False
            raise
        for ep in sorted(entry_points(group=self.group), key=lambda ep: ep.name):
            if ep.name not in self._items:
                self._items[ep.name] = ep.value
            elif not ep.value.startswith("sddr_pipeline."):  # the package's own entry points repeat its built-ins
                log.warning("entry point %s = %r of group %r is ignored: %s %r is built in",
                            ep.name, ep.value, self.group, self.what, ep.name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        """Every registered name: built-ins in registration order, then entry points by name."""
        self._load()
        return iter(list(self._items))

    def get(self, name: str) -> T:
        """The object registered as ``name`` (importing it if it was registered as a string)."""
        self._load()
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.what} {name!r}; known: {', '.join(self.names()) or 'none'} "
                f"(third parties add more through the entry-point group {self.group!r})"
            )
        item = self._items[name]
        if isinstance(item, str):
            item = import_object(item)
            self._items[name] = item
        return item

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items


def import_object(target: str) -> Any:
    """The object named by ``"module:attr.attr"`` (or a whole module by ``"module"``)."""
    module_name, _, attr = target.partition(":")
    obj: Any = import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


PREDICTORS: Registry[PredictorFactory] = Registry(
    "sddr_pipeline.predictors",
    "predictor",
    builtins=tuple(f"sddr_pipeline.predictors.{m}" for m in ("hf", "onnx", "python_callable", "simulated", "torchscript")),
)
INTEGRATIONS: Registry[IntegrationSpec] = Registry("sddr_pipeline.integrations", "integration", builtins=("sddr_pipeline.plugins",))
