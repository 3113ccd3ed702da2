"""Name -> object registries used to pick implementations from config strings.

A :class:`Registry` maps a string name to a callable (advantage estimator, KL
estimator, aggregation mode, policy loss, ...).  Unknown names raise a
``ValueError`` whose message lists every valid name, so a config typo fails
fast with a useful hint.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    """A named collection of objects of one ``kind`` (used in error messages).

    >>> REG = Registry("widget")
    >>> @REG.register("a")
    ... def a(): ...
    >>> REG.get("a") is a
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def _check_free(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise ValueError(f"duplicate {self.kind} {name!r}: already registered")

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering its argument under ``name``; returns it unchanged.

        Raises ``ValueError`` if ``name`` is already registered.
        """
        self._check_free(name)

        def decorator(obj: Any) -> Any:
            self._check_free(name)
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``.

        Raises ``ValueError`` (message lists every valid name) if absent.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def entries(self) -> dict[str, Any]:
        """``{name: object}`` for every registered name, sorted by name (a new dict): the registered
        objects themselves, for code that reads their metadata (e.g. a policy loss's ``uses``)."""
        return {name: self._items[name] for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
