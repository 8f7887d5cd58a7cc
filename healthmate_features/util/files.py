"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything is written to a temporary name in the destination's directory (same filesystem, so
the final `os.replace` is atomic) and renamed onto the destination only when the write
completed; a failed or interrupted write leaves the old file untouched and removes its
temporary file (a killed process can leave a hidden `.<name>.<hex>.tmp` behind, safe to delete).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(dest: str | Path) -> Path:
    """A unique hidden path in `dest`'s directory: `.<name>.<hex>.tmp`."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path for the block to write; rename it onto `dest` if the block succeeds.

    Side effects: replaces `dest` atomically on success; on any exception (or interruption)
    removes the temporary file and leaves `dest` as it was.
    """
    dest = Path(dest)
    tmp = temporary_sibling(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_directory(directory: str | Path) -> None:
    """Make a rename in `directory` durable (best effort: some filesystems refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(dest: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `dest` atomically; with `durable`, fsync the file and its directory."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with open(tmp, "xb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    if durable:
        fsync_directory(dest.parent)


def atomic_write_text(dest: str | Path, text: str, *, durable: bool = True) -> None:
    """Write `text` (UTF-8) to `dest` atomically; with `durable`, fsync the file and its directory."""
    atomic_write_bytes(dest, text.encode("utf-8"), durable=durable)
