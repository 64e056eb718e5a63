"""Registries of named components (query strategies, propagation methods).

An unknown name fails with the closest valid one, as MONAI's ``look_up_option`` does; each entry keeps the first
line of its docstring as the one-line help shown by ``spatial-al strategies`` / ``spatial-al methods``.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A registry lookup with a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    component: T
    summary: str


class Registry(Generic[T]):
    """Components registered by name; ``kind`` names them in error messages (e.g. "strategy")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str | None = None) -> Callable[[T], T]:
        """Decorator registering a component under ``name``; the summary defaults to its docstring's first line."""

        def decorate(component: T) -> T:
            if name in self._entries:
                raise ValueError(f"A {self.kind} named {name!r} is already registered.")
            doc = inspect.getdoc(component) or ""
            self._entries[name] = Entry(name, component, summary or doc.split("\n", 1)[0])
            return component

        return decorate

    def get(self, name: str) -> T:
        """The component registered as ``name``; raises :class:`UnknownNameError` naming the closest valid name."""
        try:
            return self._entries[name].component
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def _unknown_message(self, name: str) -> str:
        valid = sorted(self._entries)
        closest = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.0)
        hint = f" Did you mean {closest[0]!r}?" if closest else ""
        return f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind} names: {', '.join(valid)}."

    def check_options(self, name: str, options: dict) -> None:
        """Raise ValueError when ``options`` has a key ``name``'s component lacks (naming the accepted options), or a
        value of another type than the option declares (naming both).

        Options are the component's keyword-only parameters; their annotations are their types.
        """
        from .typed import ConfigError, convert

        component = self.get(name)
        parameters = inspect.signature(component).parameters.values()
        accepted = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"The {self.kind} {name!r} has no option {unknown[0]!r}; "
                f"its options are: {', '.join(accepted) or 'none'}."
            )
        types = typing.get_type_hints(component)
        for option, value in options.items():
            try:
                convert(value, types.get(option, typing.Any), f"option {option}")
            except ConfigError as error:
                raise ConfigError(f"The {self.kind} {name!r}: {error}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry[T]]:
        for name in self.names():
            yield self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def with_info(info: object) -> Callable[[T], T]:
    """Decorator attaching ``info`` (what the driver needs to know of a component) to it; :func:`info_of` reads it."""

    def mark(component: T) -> T:
        component.component_info = info
        return component

    return mark


def info_of(component: object, default: T) -> T:
    """The info :func:`with_info` attached to ``component``, or ``default``."""
    return getattr(component, "component_info", default)
