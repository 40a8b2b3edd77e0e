"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

Files are written next to their target under a temporary name, flushed, fsynced and renamed; folders are built
under a temporary sibling and renamed into place as the last step, so an interrupted export or checkpoint leaves
either the previous complete state or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _default_mode(is_dir: bool) -> int:
    """The permissions a plain ``open``/``mkdir`` would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    Works for files written by third-party code that only accepts a path (``save_file``, ``Image.save``).
    The temporary name keeps the target's suffix so libraries that dispatch on the extension still work.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".partial{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _default_mode(False))
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes_atomic(target, text.encode("utf-8"))


class OutputBusyError(FileExistsError):
    """Another process is writing the same output folder right now."""


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``.<name>.lock`` beside ``target`` (POSIX ``flock``): two writers of
    one output never both succeed; the second is refused at once with what to do. No-op where flock is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = target.with_name(f".{target.name}.lock")
    fd = os.open(str(lock), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputBusyError(f"{target} is being written by another dhumandiff process right now; wait for it "
                                  "to finish or choose another output") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_replaceable(target: Path, markers: tuple[str, ...]) -> bool:
    """May ``--overwrite`` replace ``target``? Only an empty folder, or one holding one of ``markers`` (the file
    that says it is what this command writes: ``bundle.json``, ``model_index.json``, ...). Never a file, a link,
    or a folder of someone's photos."""
    if target.is_symlink() or not target.is_dir():
        return False
    try:
        names = {p.name for p in target.iterdir()}
    except OSError:
        return False
    return not names or bool(names & set(markers))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False,
               markers: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``target`` in one rename.

    On failure (or SIGKILL) only a hidden ``.<name>.partial-*`` sibling remains, which no loader accepts. A
    second process writing the same ``target`` at the same time is refused (:class:`OutputBusyError`).
    ``overwrite`` replaces an existing ``target`` only when it is a folder this code may replace: empty, or (with
    ``markers``) holding one of those files; anything else is refused before any work is done.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)

    def refuse_existing() -> None:
        if not (target.exists() or target.is_symlink()):
            return
        if not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
        if markers is not None and not is_replaceable(target, markers):
            what = "a file" if target.is_file() or target.is_symlink() else "a folder that is not ours to replace"
            raise FileExistsError(f"{target} is {what} (no {' / '.join(markers)} in it); --overwrite only replaces "
                                  "what dhumandiff wrote: choose another output folder")

    refuse_existing()
    with _exclusive(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            yield tmp
            os.chmod(tmp, _default_mode(True))
            refuse_existing()  # another writer may have finished in the meantime
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so multi-GB weights do not load into memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

