"""The guests a kiosk remembers between portraits, so "Another scene" needs no new upload and no face encoding.

A guest who asks for it (``guest=new`` on ``/api/generate``) gets an id; the kiosk then holds their two decoded
photos in memory (never on disk: ``--keep-dir`` archives what it archived before, nothing more) and the bundle's
conditioning cache keeps their faces' conditioning (``runtimes/conditioning_cache.py``). Both go together when the
guest is forgotten: the page says so (a new guest, the page closed), the guest has made no portrait for ``idle_s``
seconds, or the book is full and they are the least recently seen. A cache entry is dropped only when no guest
still holding the same photo remains, and a one-off request's entries are dropped as soon as it ends
(:meth:`GuestBook.release`), so the cache never holds a face the kiosk no longer holds.

Bounded: at most ``limit`` guests, each two photos of at most the loader's working size (2.1 MP, about 6 MB each,
plus the two uploads when the kiosk keeps them in ``--keep-dir``).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

__all__ = ["Guest", "GuestBook"]


@dataclass
class Guest:
    """One guest's photos: decoded RGB arrays (read-only), their names, their uploads (only when the kiosk keeps
    requests) and their pixel digests (the conditioning cache's keys, ``photo_digest``)."""

    photos: tuple[np.ndarray, np.ndarray]
    names: tuple[str, str]
    digests: tuple[str, str]
    uploads: tuple[bytes, bytes] = (b"", b"")
    seen: float = field(default_factory=time.monotonic)


class GuestBook:
    """Guests by id, least recently seen first. ``forget_photos`` receives the digests no held guest uses any more
    (the kiosk passes the generator's ``ConditioningCache.forget``). Thread-safe: guests are held on the worker
    thread and forgotten from requests and the idle sweep."""

    def __init__(self, limit: int, idle_s: float, forget_photos: Callable[..., object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.idle_s, self.clock = limit, idle_s, clock
        self._forget_photos = forget_photos
        self._lock = threading.Lock()
        self._guests: collections.OrderedDict[str, Guest] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._guests)

    def get(self, gid: str) -> Guest | None:
        """The guest (now the most recently seen), or None when unknown or forgotten."""
        self.sweep()
        with self._lock:
            guest = self._guests.get(gid)
            if guest is not None:
                guest.seen = self.clock()
                self._guests.move_to_end(gid)
            return guest

    def hold(self, gid: str, guest: Guest) -> bool:
        """Hold (or replace) a guest's photos; the least recently seen go when over the limit. Whether it is held
        (False with a limit of 0)."""
        with self._lock:
            dropped = [g for g in (self._guests.pop(gid, None),) if g is not None]
            if self.limit > 0:
                guest.seen = self.clock()
                self._guests[gid] = guest
            while len(self._guests) > self.limit:
                dropped.append(self._guests.popitem(last=False)[1])
            self._release_locked(d for g in dropped for d in g.digests)
            return gid in self._guests

    def touch(self, gid: str) -> bool:
        """Mark a guest as seen now (another portrait of theirs finished); whether they are still held."""
        return self.get(gid) is not None

    def forget(self, gid: str) -> bool:
        """Drop a guest's photos and their conditioning; whether there was such a guest."""
        with self._lock:
            guest = self._guests.pop(gid, None)
            if guest is not None:
                self._release_locked(guest.digests)
            return guest is not None

    def sweep(self) -> int:
        """Forget the guests idle for ``idle_s`` seconds or more; how many."""
        with self._lock:
            now = self.clock()
            idle = [gid for gid, g in self._guests.items() if now - g.seen >= self.idle_s]
            gone = [self._guests.pop(gid) for gid in idle]
            self._release_locked(d for g in gone for d in g.digests)
            return len(gone)

    def clear(self) -> None:
        """Forget every guest (the kiosk is stopping)."""
        with self._lock:
            gone = list(self._guests.values())
            self._guests.clear()
            self._release_locked(d for g in gone for d in g.digests)

    def release(self, digests: Iterable[str]) -> None:
        """Drop the conditioning of these photos unless a held guest still has them (a one-off request ended, or
        its guest was forgotten while it ran)."""
        with self._lock:
            self._release_locked(digests)

    def _release_locked(self, digests: Iterable[str]) -> None:
        held = {d for g in self._guests.values() for d in g.digests}
        unheld = set(digests) - held
        if unheld and self._forget_photos is not None:
            self._forget_photos(*sorted(unheld))
