"""Writes that survive a power cut: a file is either its old content, its new content, or absent."""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it, rename it over ``path``, fsync the directory."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial_writes(directory: Path) -> int:
    """Delete temporaries an interrupted ``atomic_write`` left behind; returns how many."""
    leftovers = list(directory.glob(f"*{TMP_SUFFIX}"))
    for tmp in leftovers:
        tmp.unlink(missing_ok=True)
    return len(leftovers)
