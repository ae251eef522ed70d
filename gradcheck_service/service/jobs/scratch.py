"""Scratch folders of a worker (a check's job folder, a check runner's home), removed however their owner ends.

A worker removes a folder when the check in it ends, but a SIGKILLed worker process runs no cleanup, and its
folders (the submitted definition, the job file, the model's output) would stay in the temporary directory for
good. So the process that makes a folder keeps the folder itself ``flock``-ed for as long as it lives; the kernel
drops the lock when that process dies, whatever killed it. :func:`remove_orphans`, run when a worker process
starts and by the reaper, removes every such folder whose lock is free -- its owner is gone -- and never one that a
live process holds, so any number of workers may share one temporary directory. The lock is on the folder's inode,
held by the worker: the sandboxed check, which may write inside its folder, cannot touch it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Kind = Literal["job", "home", "selftest"]
KINDS: tuple[Kind, ...] = ("job", "home", "selftest")
PREFIX = "gradcheck-"
# Locked folders made by this process (path -> the open descriptor holding the lock), until they are removed.
_held: dict[Path, int] = {}

log = logging.getLogger(__name__)


def make(kind: Kind, label: str = "") -> Path:
    """A new folder ``gradcheck-{kind}-{label}XXXXXXXX`` in the temporary directory, locked by this process."""
    # Made under a name remove_orphans() does not look at, locked, then renamed (the inode, and so the lock, stay):
    # no other process ever sees the folder unlocked.
    staging = Path(tempfile.mkdtemp(prefix=f".{PREFIX}{kind}-{label}"))
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    folder = staging.with_name(staging.name[1:])
    os.rename(staging, folder)
    _held[folder] = fd
    return folder


def remove(folder: Path) -> None:
    """Remove a folder made by :func:`make` and release its lock."""
    shutil.rmtree(folder, ignore_errors=True)
    fd = _held.pop(folder, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def folder(kind: Kind, label: str = "") -> Iterator[Path]:
    """:func:`make` a folder for the length of a ``with`` block."""
    path = make(kind, label)
    try:
        yield path
    finally:
        remove(path)


def remove_orphans(root: Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``root`` (default: the temporary directory) whose owner has died."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    for path in sorted(p for kind in KINDS for p in base.glob(f"{PREFIX}{kind}-*")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # not a folder, or removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        log.warning("removed %d scratch folders of killed worker processes: %s", len(removed),
                    ", ".join(p.name for p in removed))
    return removed
