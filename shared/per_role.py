"""One object per Redis role and process, built on first use: each role's breaker, each role's
client. Lookups after the first take no lock; `clear` forgets them all (tests, the dev runner)."""

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.defaults import ROLES

T = TypeVar("T")


class PerRole(Generic[T]):
    def __init__(self, build: Callable[[str], T]):
        self._build = build
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, role: str) -> T:
        if role not in ROLES:
            raise ValueError(f"unknown Redis role {role!r}")
        existing = self._items.get(role)
        if existing is not None:
            return existing
        with self._lock:
            if role not in self._items:
                self._items[role] = self._build(role)
            return self._items[role]

    def clear(self) -> list[T]:
        """Forget every object; returns them, for the caller to close."""
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return items
