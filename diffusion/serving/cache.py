"""Caches shared by the lessons: a bounded LRU that makes each value once, the job queue's results
bounded in bytes, and kept PNG files."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any


class LRUCache:
    """A small thread-safe LRU, bounded in count, that makes each missing value once.

    When many requests miss the same key at once (a class opening the page together),
    the first one computes the value and the others wait for it instead of all
    computing it side by side. If making fails, the next waiter tries itself.
    """

    def __init__(self, capacity: int, on_evict: Callable[[Any], None] | None = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict  # called with each value pushed out (e.g. to delete its file)
        self._items: OrderedDict = OrderedDict()
        self._making: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                pending = self._making.get(key)
                if pending is None:
                    pending = self._making[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # someone else is making it: use theirs (or try again if they failed)
        try:
            value = make()
            evicted = []
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    evicted.append(self._items.popitem(last=False)[1])
            if self.on_evict is not None:
                for old in evicted:
                    self.on_evict(old)
            return value
        finally:
            with self._lock:
                del self._making[key]
            pending.set()

    def forget(self, key: Hashable) -> None:
        """Drop ``key`` (no ``on_evict``): its value is known to be gone."""
        with self._lock:
            self._items.pop(key, None)


class ResultCache:
    """Complete results by key, least recently used dropped first, bounded by their ``nbytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, result: Any) -> bool:
        """Keep ``result`` (it must say its ``nbytes``); False if it is too big to keep."""
        size = int(getattr(result, "nbytes", self.max_bytes + 1))
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= int(old.nbytes)
            self._items[key] = result
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= int(dropped.nbytes)
        return True

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


class PictureFiles:
    """Output pictures as PNG files, each encoded once and kept while it is likely to come back.

    gradio encodes every numpy output picture to PNG at zlib level 6 on every request.
    Lesson 2 sends ten pictures per slider move, and eight of them (the noise ε and the
    strip along t) do not depend on t at all. Here a picture is made and encoded (level 1:
    a few per cent larger, much faster) the first time its key is seen, and later requests
    get the same file; gradio then only hashes and copies it. The key must name everything
    the pixels depend on.

    At most ``capacity`` files are kept; the least recently used is deleted first. The
    folder is private to this process and removed at exit.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._files = LRUCache(capacity, on_evict=lambda name: Path(name).unlink(missing_ok=True))
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def _dir(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="dl-pictures-"))
                atexit.register(shutil.rmtree, self._folder, True)
            elif not self._folder.is_dir():  # removed by a temp-folder cleaner: make it again
                self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self._folder

    def path(self, key: Hashable, make: Callable[[], Any], name: str = "picture") -> str:
        """The PNG file for ``key``; ``make()`` returns its uint8 ``(H, W, 3)`` array when it is not kept.

        ``name`` starts the file name, which is what a student who downloads the picture sees.
        """
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] + "_"
        file = self._files.get_or_make(key, lambda: self._write(make(), prefix))
        if not os.path.exists(file):  # deleted behind our back (a temp-folder cleaner): make it again
            self._files.forget(key)
            file = self._files.get_or_make(key, lambda: self._write(make(), prefix))
        return file

    def _write(self, array: Any, prefix: str) -> str:
        from PIL import Image

        handle, staging = tempfile.mkstemp(dir=self._dir(), prefix=prefix, suffix=".png")
        try:
            with os.fdopen(handle, "wb") as out:
                Image.fromarray(array).save(out, format="png", compress_level=1)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return staging
