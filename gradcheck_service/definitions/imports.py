"""The repository files a check file needs, found from the source (``ast``) without running anything.

Starting from the check file, every ``import`` and ``from ... import`` statement (anywhere in the file, including
inside functions and ``try`` blocks) is resolved the way Python would resolve it against the check file's own
directory and the repository's import roots; each import that lands on a file inside the repository is followed in
turn. Imports that resolve nowhere in the repository are third-party or standard-library modules and are left to
the environment that runs the check. Imports built at run time (``importlib.import_module(name)``) cannot be seen
this way: list such files in the configuration's ``include``.
"""

from __future__ import annotations

import ast
from pathlib import Path


def _module_files(base: Path, parts: list[str]) -> list[Path] | None:
    """The files importing ``parts`` below ``base`` executes (package ``__init__`` files, then the module), or
    None when ``base`` has no such module."""
    files: list[Path] = []
    here = base
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        package, module = here / part, here / f"{part}.py"
        if package.is_dir() and (package / "__init__.py").is_file():
            files.append(package / "__init__.py")
            here = package
        elif module.is_file() and last:
            files.append(module)
            return files
        elif package.is_dir():  # a namespace package
            here = package
        else:
            return None
    return files


def _absolute(dotted: str, dirs: list[Path]) -> list[Path]:
    parts = dotted.split(".")
    for directory in dirs:  # the first directory holding the top-level name wins, as on sys.path
        if (directory / parts[0]).is_dir() or (directory / f"{parts[0]}.py").is_file():
            return _module_files(directory, parts) or []
    return []


def _imported(path: Path, tree: ast.AST, dirs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _absolute(alias.name, dirs)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                module = node.module.split(".") if node.module else []
                if module:
                    found += _module_files(base, module) or []
                elif (base / "__init__.py").is_file():
                    found.append(base / "__init__.py")
                for alias in node.names:  # `from . import layers` / `from .pkg import sub`: submodules
                    found += _module_files(base, [*module, alias.name]) or []
            elif node.module:
                found += _absolute(node.module, dirs)
                for alias in node.names:
                    found += _absolute(f"{node.module}.{alias.name}", dirs)
    return found


def local_imports(entry: Path, root: Path, import_roots: list[Path]) -> list[Path]:
    """Every file under ``root`` that ``entry`` imports, directly or through other repository files.

    ``import_roots`` are the directories a repository module is imported from (the root, ``src``, ...); the
    check file's own directory is searched first, as when it runs as a script. Returns absolute paths, sorted,
    without ``entry`` itself. A file that does not parse is still included (the check reports its syntax error).
    """
    root = root.resolve()
    entry = entry.resolve()
    dirs = [entry.parent, *(d.resolve() for d in import_roots)]
    seen = {entry}
    queue = [entry]
    while queue:
        path = queue.pop()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for found in _imported(path, tree, dirs):
            found = found.resolve()
            if found in seen or not found.is_relative_to(root):
                continue
            seen.add(found)
            queue.append(found)
    return sorted(seen - {entry})
