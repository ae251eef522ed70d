"""Naming what stopped a sandboxed check: each containment becomes an ``error`` code and a message naming the limit.

Two places see a containment. Inside the check child (:func:`classify_exception`) the model's own code gets an
exception: ``MemoryError`` under the address-space limit, ``BlockingIOError`` when it may not fork, a refused or
unreachable connection without a network, ``EROFS``/``EACCES`` when writing outside its scratch directory, ``EFBIG``
past the file-size limit. Outside it (:func:`classify_exit`) the launcher sees how the child ended: ``SIGXCPU`` at
the CPU limit, ``SIGKILL`` at the hard CPU limit, a crash whose last words were an allocation failure.

Messages carry the limit and the model's own error text, never the worker's environment (the child never had it).
No torch, Flask or SQL imports: the runner imports this module inside the sandbox.
"""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path
from typing import Any

Classified = tuple[str, str]  # (error code, message)

NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL,
                  errno.ENETDOWN, errno.ECONNRESET}
WRITE_DENIED_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT}
ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "std::bad_alloc", "cannot allocate memory",
                       "out of memory", "memoryerror")


def _gib(value: Any) -> str:
    return f"{int(value) / 2**30:g} GiB" if value else "its"


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (a model file's error is re-raised by
    the loader as a ``DefinitionError`` whose ``__context__`` is the original)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _outside(path: str, scratch: Path) -> bool:
    try:
        target = (scratch / path).resolve()
    except (OSError, RuntimeError, ValueError):
        return True
    return target != scratch and scratch not in target.parents


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in ALLOCATION_FAILURES[:4]))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def classify_exception(exc: BaseException, scratch: Path, limits: dict[str, Any]) -> Classified | None:
    """The containment that caused ``exc`` (raised by model code inside the sandbox), or None if it is the model's
    own error. ``limits`` is the job's ``sandbox.limits`` (``address_space_bytes``, ``processes``, ...)."""
    for cause in _causes(exc):
        if _is_memory_error(cause):
            return ("memory_limit", f"memory limit: the model ran out of memory under the check's address-space "
                    f"limit of {_gib(limits.get('address_space_bytes'))} ({_describe(cause)})")
        if isinstance(cause, BlockingIOError) or (
                isinstance(cause, RuntimeError) and "can't start new thread" in str(cause)):
            return ("process_limit", f"process limit: the model tried to start more than "
                    f"{limits.get('processes', 'the allowed number of')} processes or threads ({_describe(cause)})")
        if isinstance(cause, socket.gaierror) or (isinstance(cause, OSError) and cause.errno in NETWORK_ERRNOS):
            return ("network_blocked", "network: checks run without network access, the model's connection "
                    f"failed ({_describe(cause)})")
        if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
            return ("file_size_limit", f"file size limit: the model wrote past the limit of "
                    f"{int(limits.get('file_size_bytes', 0)):,} bytes per file (its printed output counts) "
                    f"({_describe(cause)})")
        if isinstance(cause, OSError) and cause.errno == errno.EMFILE:
            return ("open_files_limit", f"open files limit: the model opened more than "
                    f"{limits.get('open_files', 'the allowed number of')} files ({_describe(cause)})")
        if (isinstance(cause, OSError) and cause.errno in WRITE_DENIED_ERRNOS and cause.filename is not None
                and _outside(str(cause.filename), scratch)):
            return ("filesystem_blocked", "filesystem: the model may write only in its scratch directory and "
                    "read only the Python installation and system files; access to "
                    f"{str(cause.filename)[:200]} was denied ({_describe(cause)})")
    return None


def exit_signal(returncode: int | None, sandboxed: bool) -> int | None:
    """The signal that ended the child: negative for a direct child, ``128 + n`` as bubblewrap reports it."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if sandboxed and 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def classify_exit(returncode: int | None, sandboxed: bool, stderr_tail: str,
                  limits: dict[str, Any]) -> Classified | None:
    """The containment that ended a child that wrote no result, or None when the exit says nothing about one."""
    number = exit_signal(returncode, sandboxed)
    cpu = limits.get("cpu_seconds")
    if number == signal.SIGXCPU:
        return ("cpu_time_limit", f"CPU time limit: the check used its {cpu} CPU seconds and was stopped (SIGXCPU)")
    if number == signal.SIGXFSZ:
        return ("file_size_limit", f"file size limit: the check wrote past the limit of "
                f"{int(limits.get('file_size_bytes', 0)):,} bytes per file (SIGXFSZ)")
    if any(s in stderr_tail.lower() for s in ALLOCATION_FAILURES):
        return ("memory_limit", f"memory limit: the check ran out of memory under its address-space limit of "
                f"{_gib(limits.get('address_space_bytes'))}")
    if number == signal.SIGKILL and sandboxed:
        return ("cpu_time_limit", f"CPU time limit: the check was killed (SIGKILL) after exceeding its {cpu} "
                "CPU seconds and ignoring SIGXCPU")
    return None
