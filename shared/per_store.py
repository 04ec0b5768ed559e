"""One object per Redis store and process, built on first use: each store's breaker, each store's
client. Lookups after the first take no lock; `clear` forgets them all (tests, the dev runner)."""

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from shared.defaults import STORES

T = TypeVar("T")


class PerStore(Generic[T]):
    def __init__(self, build: Callable[[str], T]):
        self._build = build
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, store: str) -> T:
        if store not in STORES:
            raise ValueError(f"unknown Redis store {store!r}")
        existing = self._items.get(store)
        if existing is not None:
            return existing
        with self._lock:
            if store not in self._items:
                self._items[store] = self._build(store)
            return self._items[store]

    def clear(self) -> list[T]:
        """Forget every object; returns them, for the caller to close."""
        with self._lock:
            items = list(self._items.values())
            self._items.clear()
        return items
