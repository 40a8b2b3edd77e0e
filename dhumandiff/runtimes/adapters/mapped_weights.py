"""Give back the memory-mapped weight pages a runtime has already repacked.

OpenVINO reads an IR's ``.bin`` (and a cached compiled blob) through ``mmap``, repacks every weight into its
kernels' own layout in anonymous memory, and keeps the file mapped for the compiled model's lifetime without
reading it again. The pages it touched while repacking stay in the process's resident set: measured on the
sd15-size int8 UNet, 924 MB of a 2,140 MB peak were such file pages, beside the 1,214 MB that inference needs.

``madvise(MADV_DONTNEED)`` on those read-only mappings drops the pages from this process only: the data stays in
the page cache and on disk, and a page that is read again simply faults back in, so it can never change a result
(a writable mapping could hold private copy-on-write changes, so those are never touched). Doing it every few
hundredths of a second while a graph compiles keeps the load from ever holding the whole file (a cached blob
imports at over 2 GB/s: released every 0.1 s, the sd15 image encoder's load still peaked 550 MB higher than at
0.02 s), which is what keeps a 512x512 image under 2 GB in low-memory mode (BENCHMARKS.md). On systems other than Linux this is a
no-op: Core ML (macOS/iOS) maps weights itself, and the phone's memory limit does not count clean file pages.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Iterable

_MADV_DONTNEED = 4
_MAPS = Path("/proc/self/maps")


def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux") or not _MAPS.exists():
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def mapped_regions(prefixes: Iterable[str | Path]) -> list[tuple[int, int, str]]:
    """Read-only file mappings of this process whose path starts with one of ``prefixes``: (start, end, path)."""
    wanted = tuple(str(p) for p in prefixes if str(p))
    if not wanted or not _MAPS.exists():
        return []
    regions = []
    for line in _MAPS.read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or "w" in parts[1]:
            continue
        path = parts[5].strip()
        if path.startswith(wanted):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end, path))
    return regions


def release_mapped(prefixes: Iterable[str | Path]) -> int:
    """Drop this process's resident pages of read-only mappings of files under ``prefixes``; bytes advised."""
    madvise = _madvise()
    if madvise is None:
        return 0
    total = 0
    for start, end, _ in mapped_regions(prefixes):
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            total += end - start
    return total


class ReleasedWhileLoading:
    """Context manager: while the block runs (a graph compiling), release the mapped pages of ``prefixes``
    every ``interval`` seconds, and once more when it ends."""

    def __init__(self, prefixes: Iterable[str | Path], interval: float = 0.02) -> None:
        self.prefixes = [str(p) for p in prefixes if p]
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            release_mapped(self.prefixes)

    def __enter__(self) -> "ReleasedWhileLoading":
        if self.prefixes and _madvise() is not None:
            self._thread = threading.Thread(target=self._loop, name="release-mapped-weights", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        release_mapped(self.prefixes)
