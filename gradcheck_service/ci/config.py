"""The repository's CI configuration: ``[tool.gradcheck]`` in ``pyproject.toml`` or a standalone ``gradcheck.toml``.

Keys are written with hyphens, as is usual in TOML (``fail-on``, ``memory-budget``); underscores are accepted too.
Every problem is reported with the file and the key path, e.g.
``pyproject.toml: tool.gradcheck.models[1].mode: Input should be 'full', 'default' or 'fast'``.

Example::

    [tool.gradcheck]
    base-branch = "main"
    fail-on = ["regression"]

    [tool.gradcheck.defaults]
    mode = "default"

    [[tool.gradcheck.models]]
    path = "models/encoder.py"
    fail-on = ["exploding"]
    memory-budget = "2GiB"

Models may also be listed inline, ``models = ["checks/a.py", { path = "checks/b.py", mode = "full" }]``.
``pythonpath = ["src"]`` names the folders (besides the repository root, the folder of this file) that the
repository's modules are imported from; a model's ``include`` globs add files sent to a server with its check
file beyond the ones it imports.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..options import CheckOptions
from ..report.units import parse_bytes
from ..strict_json import StrictModel

CONFIG_FILES = ("gradcheck.toml", "pyproject.toml")
# Keys of a model entry that belong to CI; every other key is a CheckOptions field.
_ENTRY_KEYS = {"path", "name", "labels", "timeout", "memory_budget", "fail_on", "include"}
CiFailOn = Literal["regression"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


def _hyphen(name: str) -> str:
    return name.replace("_", "-")


class _Table(StrictModel):
    """A table of the configuration file: keys spelled with hyphens or underscores."""

    model_config = ConfigDict(alias_generator=_hyphen, populate_by_name=True)


class RegressionThresholds(_Table):
    """When a change against the baseline is a regression. Fractions are relative to the baseline value."""

    memory_growth: float = Field(0.10, ge=0, description="Activation or peak bytes growing by more than this "
                                 "fraction (0.10 = +10 %).")
    gradient_norm_factor: float = Field(10.0, gt=1, description="A total or per-parameter gradient norm that "
                                        "changes by at least this factor, up or down (10 = an order of magnitude).")
    slowdown: float = Field(0.5, ge=0, description="Forward+backward step time growing by more than this fraction.")
    min_slowdown_s: float = Field(0.005, ge=0, description="...and by more than this many seconds, so timer noise "
                                  "on millisecond-sized steps is not called a slowdown.")


class ModelEntry(BaseModel):
    """One configured model, with its check options resolved."""

    path: Path = Field(description="Absolute path of the .py model file or .json spec.")
    name: str
    labels: list[str] = Field(default_factory=list)
    timeout_s: float | None = None
    options: CheckOptions
    fail_on_regression: bool = False
    include: list[Path] = Field(default_factory=list, description="Repository files sent with a .py model file "
                                "besides the ones it imports (absolute paths, from the `include` globs).")


class CiConfig(BaseModel):
    source: Path = Field(description="The file the configuration came from.")
    models: list[ModelEntry]
    pythonpath: list[Path] = Field(default_factory=list, description="Absolute directories the repository's "
                                   "modules are imported from, besides its root (e.g. src/).")
    base_branch: str | None = None
    server: str | None = None
    junit: str | None = None
    summary: str | None = None
    report_dir: str | None = None
    fail_on_regression: bool = False
    regression: RegressionThresholds = Field(default_factory=RegressionThresholds)


class _RawConfig(_Table):
    models: Annotated[list[Any], Field(min_length=1)]
    pythonpath: list[str] = Field(default_factory=list)
    defaults: dict[str, Any] = Field(default_factory=dict)
    base_branch: str | None = None
    server: str | None = None
    junit: str | None = None
    summary: str | None = None
    report_dir: str | None = None
    fail_on: list[CiFailOn] = Field(default_factory=list)
    regression: RegressionThresholds = Field(default_factory=RegressionThresholds)


def _loc(prefix: str, parts: tuple[Any, ...]) -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _problems(errors: list[Any], prefix: str, names: dict[str, str] | None = None) -> list[str]:
    """Pydantic errors as 'key.path: message', with option names spelled as they were in the file."""
    lines = []
    for error in errors:
        parts = tuple(error["loc"])
        if names and parts and isinstance(parts[0], str):
            parts = (names.get(parts[0], parts[0]), *parts[1:])
        message = "unknown key" if error["type"] == "extra_forbidden" else str(error["msg"])
        lines.append(f"{_loc(prefix, parts)}: {message}")
    return lines


def _entry(raw: dict[str, Any], defaults: dict[str, Any], root: Path, where: str) -> ModelEntry:
    merged = {**defaults, **raw}
    spelled = {key.replace("-", "_"): key for key in merged}
    values = {key.replace("-", "_"): value for key, value in merged.items()}
    problems: list[str] = []
    path_value = values.get("path")
    if not isinstance(path_value, str) or not path_value:
        raise ConfigError(f"{where}.path: required: the .py model file or .json spec to check")
    path = (root / path_value).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}.path: {path_value}: no such file (relative to {root})")
    if path.suffix.lower() not in (".py", ".json"):
        raise ConfigError(f"{where}.path: {path_value}: expected a .py model file or a .json spec")
    option_values = {k: v for k, v in values.items() if k not in _ENTRY_KEYS}
    fail_on = values.get("fail_on", [])
    if not isinstance(fail_on, list):
        raise ConfigError(f"{where}.{spelled['fail_on']}: expected a list, e.g. [\"exploding\", \"regression\"]")
    kept = [i for i, kind in enumerate(fail_on) if kind != "regression"]  # "regression" is CI's, not the check's
    option_values["fail_on"] = [fail_on[i] for i in kept]
    if values.get("memory_budget") is not None:
        budget = values["memory_budget"]
        try:
            option_values["memory_budget_bytes"] = budget if isinstance(budget, int) else parse_bytes(str(budget))
        except ValueError as exc:
            message = str(exc)
            raise ConfigError(f"{where}.{spelled['memory_budget']}: {message}") from None
    try:
        options = CheckOptions.model_validate(option_values)
    except ValidationError as exc:
        problems.extend(_problems(_refer_to_file(exc.errors(), kept), where,
                                  {**spelled, "memory_budget_bytes": spelled.get("memory_budget", "")}))
    include = _include(values.get("include", []), root, f"{where}.include")
    name = values.get("name") or path.stem
    try:
        entry = ModelEntry(path=path, name=name, labels=values.get("labels", []), timeout_s=values.get("timeout"),
                           options=options if not problems else CheckOptions(),
                           fail_on_regression="regression" in fail_on, include=include)
    except ValidationError as exc:
        problems.extend(_problems(exc.errors(), where, {"timeout_s": spelled.get("timeout", "timeout")}))
    if problems:
        raise ConfigError("; ".join(problems))
    return entry


def _refer_to_file(errors: list[Any], kept: list[int]) -> list[Any]:
    """Point fail_on errors at the index in the file (before 'regression' entries were taken out)."""
    for error in errors:
        loc = list(error["loc"])
        if len(loc) > 1 and loc[0] == "fail_on" and isinstance(loc[1], int) and loc[1] < len(kept):
            loc[1] = kept[loc[1]]
        error["loc"] = tuple(loc)
    return errors


def find_config(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """(file, the [tool.gradcheck] table) of the first configured file in ``directory``; None when none is."""
    for filename in CONFIG_FILES:
        path = directory / filename
        if not path.is_file():
            continue
        data = _read_toml(path)
        table = data.get("tool", {}).get("gradcheck")
        if table is None and filename == "gradcheck.toml":
            table = data  # a standalone file may hold the keys at the top level
        if table is not None:
            return path, table
    return None


def import_roots(root: Path, pythonpath: Sequence[str | Path] | None = None) -> list[Path]:
    """Where a repository's own modules are imported from: its ``pythonpath`` folders, then its root, as pytest's
    ``pythonpath`` and ``rootdir`` do (``check``, ``ci`` and the pytest plugin all import from these).

    ``pythonpath`` None: the folders configured in ``root``'s gradcheck configuration, if it has one (folders
    that do not exist are left out; ``load_config`` is where they are refused)."""
    root = root.resolve()
    if pythonpath is None:
        found = find_config(root)
        pythonpath = found[1].get("pythonpath", []) if found else []
        if not isinstance(pythonpath, list) or not all(isinstance(p, str) for p in pythonpath):
            raise ConfigError(f"{found[0].name if found else 'configuration'}: pythonpath: expected a list of "
                              'folders, e.g. ["src"]')
    folders = [root / p for p in pythonpath]
    return [*(folder for folder in folders if folder.is_dir() and folder.resolve() != root), root]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def load_config(path: Path | None = None, directory: Path | None = None) -> CiConfig:
    """Read and validate the configuration from ``path``, or find it in ``directory`` (default: the current one).

    Raises :class:`ConfigError` whose message starts with the file name and names the offending key.
    """
    if path is not None:
        data = _read_toml(path)
        table = data.get("tool", {}).get("gradcheck", data if path.name != "pyproject.toml" else None)
        if table is None:
            raise ConfigError(f"{path}: no [tool.gradcheck] table")
        source = path
    else:
        found = find_config(directory or Path.cwd())
        if found is None:
            raise ConfigError(f"{directory or Path.cwd()}: no gradcheck.toml and no [tool.gradcheck] table in "
                              "pyproject.toml")
        source, table = found
    prefix = "tool.gradcheck" if "tool" in _read_toml(source) else "gradcheck"
    try:
        return _validate(source, table, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{source.name}: {exc}") from None


def _validate(source: Path, table: dict[str, Any], prefix: str) -> CiConfig:
    try:
        raw = _RawConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError("; ".join(_problems(exc.errors(), prefix))) from None
    root = source.parent.resolve()
    pythonpath = []
    for i, entry in enumerate(raw.pythonpath):
        directory = (root / entry).resolve()
        if Path(entry).is_absolute() or not directory.is_relative_to(root):
            raise ConfigError(f"{prefix}.pythonpath[{i}]: {entry}: must be a directory inside the repository")
        if not directory.is_dir():
            raise ConfigError(f"{prefix}.pythonpath[{i}]: {entry}: no such directory (relative to {root})")
        pythonpath.append(directory)
    models = []
    for i, item in enumerate(raw.models):
        where = f"{prefix}.models[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a path such as \"models/encoder.py\" or a table with a `path` "
                              f"key, not {_toml_type(item)}")
        models.append(_entry(item, raw.defaults, root, where))
    names = [m.name for m in models]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"{prefix}.models: two models are named {duplicate!r}; give one a distinct `name`")
    return CiConfig(source=source.resolve(), models=models, base_branch=raw.base_branch, server=raw.server,
                    junit=raw.junit, summary=raw.summary, report_dir=raw.report_dir, pythonpath=pythonpath,
                    fail_on_regression="regression" in raw.fail_on, regression=raw.regression)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", list: "an array"}
    return names.get(type(value), f"a {type(value).__name__}")


def _include(patterns: Any, root: Path, where: str) -> list[Path]:
    """The files matched by ``include`` globs (relative to the repository root); each glob must match one."""
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{where}: expected a list of paths or globs, e.g. [\"mylib/**/*.py\", \"configs/*.yaml\"]")
    files: list[Path] = []
    for i, pattern in enumerate(patterns):
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise ConfigError(f"{where}[{i}]: {pattern!r}: must be a path or glob inside the repository")
        matched = sorted(p.resolve() for p in root.glob(pattern) if p.is_file())
        if not matched:
            raise ConfigError(f"{where}[{i}]: {pattern}: matches no file (relative to {root})")
        files += [p for p in matched if p not in files]
    return files
