"""What the model's own code prints while it is built and run, kept out of our output and into the report.

A model file may print (nanoGPT prints its parameter count), warn, or start a process that writes to the
terminal. ``check --json`` must still print nothing but the report, and the user should still see what their
code said. :class:`CapturedOutput` points file descriptors 1 and 2 at one file for the duration (so writes from C
extensions and child processes are caught, not only ``print``), points ``sys.stdout``/``sys.stderr`` there too
(they may not be backed by those descriptors, e.g. under click's test runner), and afterwards keeps at most
``limit_bytes``: the head and the tail, with a line saying how much was left out between them.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, TextIO

LIMIT_BYTES = 64 * 1024


def _flush(stream: IO[str] | None) -> None:
    with contextlib.suppress(Exception):  # a closed or odd replacement stream must not stop the check
        if stream is not None:
            stream.flush()


def _dup(fd: int) -> int | None:
    try:
        return os.dup(fd)
    except OSError:  # the descriptor was closed (a daemon): nothing to restore later
        return None


class CapturedOutput:
    """Context manager: stdout and stderr of everything run inside go to one file, read back capped as text.

    ``path``: where the output is written while it runs (the job directory, so that a crash leaves it for the
    launcher to read); a temporary file otherwise. ``terminal`` is a text stream onto the stderr this process had
    before, for what we draw ourselves meanwhile (the progress bar). ``text`` is set on exit. It may be entered
    again (loading the model, then checking it): the output accumulates until :meth:`close`.
    """

    def __init__(self, path: Path | None = None, limit_bytes: int = LIMIT_BYTES) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.text = ""
        self.total_bytes = 0
        self.terminal: TextIO = sys.stderr
        self._file: IO[bytes] | None = None
        self._saved: list[int | None] = []
        self._streams: tuple[TextIO, TextIO] = (sys.stdout, sys.stderr)
        self._ours: list[TextIO] = []

    def __enter__(self) -> CapturedOutput:
        self._streams = (sys.stdout, sys.stderr)
        for stream in self._streams:
            _flush(stream)
        if self._file is None:
            self._file = self.path.open("w+b") if self.path is not None else tempfile.TemporaryFile()
        self._file.seek(0, io.SEEK_END)
        self._saved = [_dup(1), _dup(2)]
        if self._saved[1] is not None:
            self.terminal = os.fdopen(os.dup(self._saved[1]), "w", buffering=1, encoding="utf-8",
                                      errors="replace")
        for fd in (1, 2):
            os.dup2(self._file.fileno(), fd)
        # Line-buffered, so that print() and C-level writes land in the order they were made.
        out = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        err = os.fdopen(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        self._ours = [out, err]
        sys.stdout, sys.stderr = out, err
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for stream in (sys.stdout, sys.stderr, *self._ours):
            _flush(stream)
        sys.stdout, sys.stderr = self._streams
        for fd, saved in zip((1, 2), self._saved, strict=True):
            if saved is None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            else:
                os.dup2(saved, fd)
                os.close(saved)
        if self.terminal is not self._streams[1]:
            with contextlib.suppress(OSError):
                self.terminal.close()
            self.terminal = self._streams[1]
        assert self._file is not None
        self.text, self.total_bytes = read_capped(self._file, self.limit_bytes)
        self._ours = []
        if exc_type is not None:  # the model's code raised: nothing more will be run under this capture
            self.close()

    def close(self) -> None:
        """Release the file the output went to (``text`` stays)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_capped(handle: IO[bytes], limit_bytes: int = LIMIT_BYTES) -> tuple[str, int]:
    """The text of ``handle`` (from its start) in at most about ``limit_bytes``, and its full size in bytes.

    Past the limit, the first and the last half are kept around a line saying how many bytes were left out; the
    file is never read whole (a model may print gigabytes). Invalid UTF-8 is replaced, never an error.
    """
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    if size <= limit_bytes:
        return handle.read().decode("utf-8", errors="replace"), size
    half = limit_bytes // 2
    head = handle.read(half).decode("utf-8", errors="replace")
    handle.seek(size - half)
    tail = handle.read(half).decode("utf-8", errors="replace")
    dropped = size - 2 * half
    return f"{head}\n[... {dropped:,} bytes of output left out ...]\n{tail}", size


def output_or_none(text: str) -> str | None:
    """The report's ``output``: None when the model printed nothing (or only whitespace)."""
    return text if text.strip() else None
