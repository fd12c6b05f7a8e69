"""Per-process memos for rows that rarely change but are read on every order.

A memo keeps a value for at most ``ttl_s`` seconds and at most ``max_entries`` keys
(then it starts again empty). ``clear_all`` empties every memo: the tests call it between
tests, and bulk reloads (instruments) call ``clear`` on theirs. Use one only where a
value a few seconds old is harmless or is invalidated where it changes.
"""

import threading
import time
from collections.abc import Callable, Hashable

_memos: list["Memo"] = []


class Memo:
    def __init__(self, name: str, *, ttl_s: float, max_entries: int = 100_000):
        self.name = name
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._values: dict = {}
        self._lock = threading.Lock()
        _memos.append(self)

    def get(self, key: Hashable, load: Callable[[], object]):
        """The value for ``key``, from ``load()`` when missing or stale. ``None`` is not kept."""
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if value is not None:
            with self._lock:
                if len(self._values) >= self.max_entries:
                    self._values.clear()
                self._values[key] = (now + self.ttl_s, value)
        return value

    def get_many(self, keys, load_many: Callable[[list], dict]) -> dict:
        """The values for ``keys`` ({key: value}), those missing or stale from one
        ``load_many(missing keys)`` ({key: value}; a key it leaves out, or maps to ``None``, is not
        kept)."""
        now = time.monotonic()
        found, missing = {}, []
        for key in dict.fromkeys(keys):
            hit = self._values.get(key)
            if hit is not None and hit[0] > now:
                found[key] = hit[1]
            else:
                missing.append(key)
        if missing:
            loaded = {key: value for key, value in load_many(missing).items() if value is not None}
            with self._lock:
                if len(self._values) + len(loaded) > self.max_entries:
                    self._values.clear()
                self._values.update((key, (now + self.ttl_s, value)) for key, value in loaded.items())
            found.update(loaded)
        return found

    def drop(self, key: Hashable) -> None:
        self._values.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


def clear_all() -> None:
    for memo in _memos:
        memo.clear()
