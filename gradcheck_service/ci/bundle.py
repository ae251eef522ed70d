"""What ``ci --server`` and ``submit`` send for a Python model file: the check file and the repository code it needs.

The files are the check file, every repository file it imports (followed statically, see
:mod:`gradcheck_service.definitions.imports`) and the configuration's ``include`` globs, packed as one zip with
their paths relative to the repository root, plus the import roots (the root and e.g. ``src``) the worker puts on
``sys.path``. The worker unpacks them with the same layout, so ``from model import GPT`` and
``from mylib.layers import Block`` resolve there as they do in the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..definitions.archive import MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, pack
from ..definitions.imports import local_imports


class BundleError(ValueError):
    """The model's files cannot be sent (too many, too large, not text); the message names the file."""


@dataclass(frozen=True)
class Bundle:
    archive: bytes
    entry: str = ""  # the check file's path inside the archive
    pythonpath: tuple[str, ...] = (".",)  # import roots inside the archive; "." is its root
    files: tuple[str, ...] = ()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def bundle(entry: Path, root: Path, pythonpath: list[Path] | None = None, include: list[Path] | None = None) -> Bundle:
    """Pack ``entry`` (a .py check file under ``root``) with the repository files it imports and ``include``.

    ``pythonpath``: absolute directories under ``root`` that the repository's modules are imported from besides
    ``root`` itself. A check file outside ``root`` is sent from its own directory.
    """
    entry, root = entry.resolve(), root.resolve()
    if not entry.is_relative_to(root):
        root = entry.parent
    roots = [d.resolve() for d in pythonpath or [] if d.resolve().is_relative_to(root)]
    paths = [entry, *local_imports(entry, root, [*roots, root])]
    paths += [p.resolve() for p in include or [] if p.resolve() not in paths]
    if len(paths) > MAX_FILES:
        raise BundleError(f"{_relative(entry, root)}: {len(paths)} files to send, more than the limit of {MAX_FILES}")
    files: dict[str, bytes] = {}
    for path in paths:
        if not path.is_relative_to(root):
            raise BundleError(f"{path}: outside the repository {root}")
        name = _relative(path, root)
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            raise BundleError(f"{name}: {len(data):,} bytes, more than the limit of {MAX_FILE_BYTES:,} per file")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{name}: not UTF-8 text; only source and text files can be sent") from None
        files[name] = data
    total = sum(len(d) for d in files.values())
    if total > MAX_TOTAL_BYTES:
        largest = ", ".join(sorted(files, key=lambda n: len(files[n]), reverse=True)[:3])
        raise BundleError(f"{_relative(entry, root)}: {total:,} bytes of files to send, more than the limit of "
                          f"{MAX_TOTAL_BYTES:,} (largest: {largest})")
    import_roots = tuple(dict.fromkeys([*(_relative(d, root) for d in roots if d != root), "."]))
    return Bundle(pack(files), _relative(entry, root), import_roots, tuple(sorted(files)))
