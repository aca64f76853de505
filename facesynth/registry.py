"""Name -> component registries, filled with built-ins and ``facesynth.*`` entry points.

A component is a class with a pydantic ``Options`` model and a constructor taking an instance
of it. Built-ins are registered as ``"module:Class"`` strings so that naming a generator does
not import every backend's heavy dependencies.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from facesynth.errors import UserInputError

T = TypeVar("T")


class StrictOptions(BaseModel):
    """Base for component options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentSpec(StrictOptions):
    """A component chosen by name, with its options (validated by the component)."""

    model_config = StrictOptions.model_config | {"extra": "allow"}
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Components of one kind (generators, filters, ...) by name."""

    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.group = f"facesynth.{kind}s"
        self._targets: dict[str, str | type[T]] = dict(builtins)
        self._entry_points_loaded = False

    def register(self, name: str, target: str | type[T]) -> None:
        """Register a class (or a ``"module:Class"`` string) under ``name``."""
        self._targets[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def get(self, name: str) -> type[T]:
        self._load_entry_points()
        if name not in self._targets:
            raise UserInputError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; "
                f"available: {', '.join(self.names())}"
            )
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module_name), attr)
            self._targets[name] = target
        return target

    def options_model(self, name: str) -> type[BaseModel]:
        return self.get(name).Options  # type: ignore[attr-defined]

    def parse_options(self, name: str, options: dict[str, Any]) -> BaseModel:
        """Validate ``options`` for component ``name``; raises pydantic's ``ValidationError``."""
        return self.options_model(name).model_validate(options)

    def create(self, name: str, **options: Any) -> T:
        """Build component ``name`` from keyword options, with a one-line error on bad ones."""
        try:
            parsed = self.parse_options(name, options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or name
            raise UserInputError(f"{self.kind} '{name}' option {where}: {first['msg']}") from None
        return self.get(name)(parsed)  # type: ignore[call-arg]
