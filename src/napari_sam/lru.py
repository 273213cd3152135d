"""The one least-recently-used cache of the package, bounded in bytes and thread-safe."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """A mapping that forgets its least recently used values past ``max_bytes``.

    ``size_of(value)`` gives a value's size in bytes; a value larger than the whole
    budget is not kept. ``get`` counts as a use.
    """

    def __init__(self, max_bytes: float, size_of: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._used = 0
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def used_bytes(self) -> int:
        return self._used

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        size = self._size_of(value)
        with self._lock:
            self._pop(key)
            if size > self.max_bytes:
                return
            self._items[key] = value
            self._used += size
            while self._used > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._used -= self._size_of(dropped)

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._pop(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0

    def _pop(self, key: Hashable) -> V | None:
        value = self._items.pop(key, None)
        if value is not None:
            self._used -= self._size_of(value)
        return value


def tensor_bytes(tensor) -> int:
    """Bytes held by a torch tensor's elements."""
    return tensor.numel() * tensor.element_size()
