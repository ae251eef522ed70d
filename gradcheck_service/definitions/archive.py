"""A repository's model code as one archive: the check file plus the repository files it imports.

The client packs the files as a zip (:func:`pack`); the API and the worker read an archive with
:func:`read_archive`, which accepts a zip or a gzip-compressed tar and treats it as hostile input: every member must
be a regular file with a relative path (no absolute path, no ``..``, no backslash, no symlink, hard link or device),
UTF-8 text without NUL characters, and the archive stays under a file count and a size cap. Nothing is written to
disk here and nothing declared in the archive's headers is trusted: each member is read with a bounded read.
"""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MAX_FILES = 500
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 8 * 1024 * 1024
MAX_PATH_CHARS = 400
# Bytes of a tar stream besides the files' own, allowed per file: its header, its padding to 512 bytes, a long-name
# or pax record, and the directory entries around it. With the total limit, this bounds the bytes decompressed.
_TAR_OVERHEAD_PER_FILE = 4096
# A fixed timestamp, so packing the same files twice gives the same bytes (and the same model hash).
_EPOCH = (1980, 1, 1, 0, 0, 0)


class ArchiveError(ValueError):
    """An archive that cannot be used; ``problems`` are (member path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {message}" if path else message for path, message in problems))


@dataclass(frozen=True)
class Limits:
    """Caps on one archive: member count and uncompressed bytes, per file and in all."""

    max_files: int = MAX_FILES
    max_file_bytes: int = MAX_FILE_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES


def member_path(name: str) -> str | None:
    """The normalised relative POSIX path of an archive member, or None when the name is unsafe."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name.split("/")[0]:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or len(name) > MAX_PATH_CHARS:
        return None
    return "/".join(parts)


def pack(files: Mapping[str, bytes]) -> bytes:
    """A deflated zip of ``files`` (relative POSIX path -> content), members sorted, timestamps fixed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, files[path])
    return buffer.getvalue()


def _zip_members(data: bytes) -> Iterator[tuple[str, str | None, io.BufferedIOBase | None]]:
    """(name, why it is refused or None, a reader) per zip member; directories are skipped."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the tool recorded permissions only
            if info.is_dir():
                continue
            if kind == stat.S_IFLNK:
                yield info.filename, "a symbolic link (only regular files are accepted)", None
            elif kind and kind != stat.S_IFREG:
                yield info.filename, "not a regular file", None
            elif info.flag_bits & 0x1:
                yield info.filename, "encrypted", None
            else:
                with archive.open(info) as handle:
                    yield info.filename, None, handle  # type: ignore[misc]


class _Bounded(io.RawIOBase):
    """The decompressed bytes of a gzip stream, refused (:class:`ArchiveError`) at the first byte past ``limit``.

    A tar stream is read sequentially, so every byte the tar reader skips (a refused member, a directory header,
    a pax record) is decompressed first; this bound makes a bomb cost at most ``limit`` bytes of inflating.
    """

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__()
        self._gzip = gzip.GzipFile(fileobj=io.BytesIO(data))
        self._limit = limit
        self._count = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._gzip.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        count = self._gzip.readinto(buffer)
        self._count += count
        if self._count > self._limit:
            raise ArchiveError([("", f"more than {self._limit:,} bytes once decompressed (the files' limit plus "
                                     "their tar headers)")])
        return count


def _tar_members(data: bytes, limits: Limits) -> Iterator[tuple[str, str | None, io.BufferedIOBase | None]]:
    directories = 0
    with _Bounded(data, limits.max_total_bytes + (limits.max_files + 1) * _TAR_OVERHEAD_PER_FILE) as stream, \
            tarfile.open(fileobj=stream, mode="r|") as archive:  # "r|": a forward-only stream, never seeking back
        for info in archive:
            if info.isdir():
                directories += 1  # skipped, but each costs a header to read: capped like the files
                if directories > limits.max_files:
                    raise ArchiveError([("", f"more than {limits.max_files} directories")])
                continue
            if info.issym() or info.islnk():
                yield info.name, "a link (only regular files are accepted)", None
            elif not info.isreg():
                yield info.name, "not a regular file", None
            else:
                yield info.name, None, archive.extractfile(info)  # type: ignore[misc]


def read_archive(data: bytes, limits: Limits | None = None) -> dict[str, str]:
    """Validate an archive (zip or tar.gz) and return its files as {relative path: text}.

    Raises :class:`ArchiveError` listing each refused member (unsafe path, link, not UTF-8 text) or the limit that
    was passed. Sizes are counted on the bytes actually decompressed, never on the headers, and reading stops at
    the first byte past a limit (a member over the per-file size, the files over the total), so a decompression
    bomb is refused after inflating at most a limit's worth of bytes.
    """
    limits = limits or Limits()
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        members = _zip_members(data)
    elif data[:2] == b"\x1f\x8b":
        members = _tar_members(data, limits)
    else:
        raise ArchiveError([("", "not a zip or gzip-compressed tar archive")])
    files: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    total = 0
    try:
        for name, refused, handle in members:
            if len(files) + len(problems) >= limits.max_files:
                raise ArchiveError([("", f"more than {limits.max_files} files")])
            path = member_path(name)
            if path is None:
                problems.append((name[:200], "unsafe path (absolute, '..', a backslash or a drive)"))
                continue
            if refused or handle is None:
                problems.append((path, refused or "cannot be read"))
                continue
            raw = handle.read(limits.max_file_bytes + 1)
            if len(raw) > limits.max_file_bytes:
                raise ArchiveError([*problems, (path, f"larger than {limits.max_file_bytes:,} bytes")][:20])
            total += len(raw)
            if total > limits.max_total_bytes:
                raise ArchiveError([("", f"more than {limits.max_total_bytes:,} bytes of files once unpacked")])
            if path in files:
                problems.append((path, "appears twice"))
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append((path, "not UTF-8 text (only source and text files are accepted)"))
                continue
            if "\x00" in text:
                problems.append((path, "contains a NUL character"))
                continue
            files[path] = text
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ArchiveError):
            raise
        raise ArchiveError([("", f"a damaged archive: {exc}")]) from None
    directories = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    problems += [(path, "is both a file and a directory") for path in sorted(directories & files.keys())]
    if problems:
        raise ArchiveError(problems[:20])
    if not files:
        raise ArchiveError([("", "the archive holds no files")])
    return files


def write_files(files: Mapping[str, str], directory: Path) -> None:
    """Write ``files`` below ``directory`` (paths checked again: a stored run is not trusted either)."""
    base = directory.resolve()
    for name, text in files.items():
        path = member_path(name)
        if path is None:
            raise ArchiveError([(name[:200], "unsafe path")])
        target = base.joinpath(*PurePosixPath(path).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
