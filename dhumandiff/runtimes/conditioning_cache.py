"""Per-guest conditioning cache: a couple asking for another scene pays only for the text encoder, the UNet and the
decoder, not again for finding and encoding their faces.

What is cached is a pure function of its key, so a hit gives the same bytes a miss computes and the image is
bit-identical with or without the cache:

* a person's identity conditioning (the face projection's ``ip_tokens`` and ``face_token``, from the identity
  encoder's embedding and the image encoder's output) under :class:`PersonKey`: the bundle (``bundle``, see
  :func:`bundle_identity`), the photo (``photo``, :func:`photo_digest`), the face picked in it (``face_index``)
  and what the image encoder sees (``clip_input``: the face crop or the whole photo);
* the unconditional (negative-prompt) text row under :class:`TextKey`: the bundle and the negative prompt. It
  holds nothing of a guest's, so :meth:`ConditioningCache.forget` leaves it.

The photo is keyed by the sha256 of its *decoded* pixels (after EXIF rotation and the loader's reduction), not of
its file: those pixels are exactly what the face encoders consume, so equal keys mean equal inputs whatever the
photo came as (a path, an upload's bytes, an array, a PIL image; the kiosk hands the generator decoded arrays and
has no file at that point), and the same photo re-encoded or with other metadata still hits. Hashing ~6 MB of
pixels (the loader's 2.1 MP ceiling) takes a few milliseconds.

Bounded (least recently used out first) by entries and by bytes; identity embeddings are a guest's biometric
data, so a kiosk drops a guest's entries with :meth:`ConditioningCache.forget` when it forgets the guest, and the
cache is off unless a caller gives one (``load_bundle(..., conditioning_cache=ConditioningCache())``): a CLI makes
one image per process, and benchmarks time repeated images of the same photos, which a cache would flatter.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

__all__ = ["ConditioningCache", "PersonKey", "TextKey", "bundle_identity", "photo_digest"]

DEFAULT_MAX_ENTRIES = 64
DEFAULT_MAX_BYTES = 16 * 2**20  # a person is ~50 kB at sd15 scale, ~140 kB at SDXL's: 64 entries fit either way


class PersonKey(NamedTuple):
    bundle: str
    photo: str
    face_index: int | None
    clip_input: str


class TextKey(NamedTuple):
    bundle: str
    negative_prompt: str


def photo_digest(image: Image.Image) -> str:
    """sha256 (hex) of a decoded photo's pixels, with its size and mode (so equal bytes of other shapes differ)."""
    h = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode("ascii"))
    h.update(image.tobytes())
    return h.hexdigest()


def bundle_identity(manifest_json: str, providers: list[str] | tuple[str, ...]) -> str:
    """What a cached value depends on besides its inputs: the bundle's manifest (which holds every graph file's
    sha256, the recipe and the face cropper's settings) and what executes the graphs (another execution provider
    may round differently), so a cache shared by several generators never hands one another's numbers."""
    h = hashlib.sha256(manifest_json.encode("utf-8"))
    h.update(("\0" + "\0".join(providers)).encode("utf-8"))
    return h.hexdigest()


def _nbytes(value: Any) -> int:
    items = value if isinstance(value, tuple) else (value,)
    return sum(int(v.nbytes) for v in items if isinstance(v, np.ndarray))


def _frozen(value: Any) -> Any:
    """Read-only copies of the arrays in ``value`` (a tuple or one array): a caller cannot change a cached value."""
    def freeze(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            v = np.array(v, copy=True)
            v.flags.writeable = False
        return v

    return tuple(freeze(v) for v in value) if isinstance(value, tuple) else freeze(value)


class ConditioningCache:
    """An LRU of conditioning arrays, bounded by ``max_entries`` and ``max_bytes`` (arrays' ``nbytes``); a value
    larger than ``max_bytes`` is not kept. Thread-safe: the kiosk generates on one thread and forgets guests on
    another. ``hits``/``misses``/``evictions`` count since the last :meth:`clear`."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer (got {max_entries!r})")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer (got {max_bytes!r})")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple, tuple[Any, int]] = collections.OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: tuple) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: tuple, value: Any) -> None:
        """Keep read-only copies of ``value``'s arrays under ``key``, evicting the least recently used entries
        until both bounds hold."""
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        frozen = _frozen(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (frozen, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1

    def forget(self, *photos: str) -> int:
        """Drop every person entry of these photos (:func:`photo_digest` values), in any bundle and with any face
        index; how many were dropped."""
        wanted = set(photos)
        with self._lock:
            gone = [k for k in self._items if isinstance(k, PersonKey) and k.photo in wanted]
            for k in gone:
                self._bytes -= self._items.pop(k)[1]
            return len(gone)

    def photos(self) -> set[str]:
        """The photos that have entries now."""
        with self._lock:
            return {k.photo for k in self._items if isinstance(k, PersonKey)}

    def clear(self) -> None:
        """Drop everything, and reset the counters."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = self.evictions = 0

    def stats(self) -> dict[str, int]:
        """Entries, bytes and counters (for logs and the kiosk's health answer)."""
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "max_entries": self.max_entries,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
