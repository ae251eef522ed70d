"""Repository archives: the import closure sent with a check file, and reading an archive as hostile input."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from gradcheck_service.ci.bundle import BundleError, bundle
from gradcheck_service.ci.config import ConfigError, load_config
from gradcheck_service.definitions.archive import ArchiveError, Limits, pack, read_archive, write_files
from gradcheck_service.definitions.imports import local_imports
from tests.e2e.repository_layouts import LAYOUTS
from tests.service_support import tar_gz_bomb, tar_gz_directory_bomb


def _layout(tmp_path: Path, name: str) -> Path:
    for path, text in LAYOUTS[name].items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


def _names(paths: list[Path], root: Path) -> set[str]:
    return {p.relative_to(root.resolve()).as_posix() for p in paths}


@pytest.mark.parametrize(("layout", "entry", "roots", "expected"), [
    ("root_model", "gradcheck/tiny_check.py", ["."], {"model.py"}),
    ("src_package", "checks/net_check.py", ["src", "."],
     {"src/mylib/__init__.py", "src/mylib/net.py", "src/mylib/layers.py", "src/mylib/config.py"}),
    ("three_modules", "checks/network_check.py", ["."], {"network.py", "blocks.py", "heads.py"}),
])
def test_import_closure_of_real_layouts(tmp_path: Path, layout: str, entry: str, roots: list[str],
                                        expected: set[str]) -> None:
    root = _layout(tmp_path, layout)
    found = local_imports(root / entry, root, [root / r for r in roots])
    assert _names(found, root) == expected


def test_import_closure_follows_every_import_form_and_leaves_others_alone(tmp_path: Path) -> None:
    files = {
        "check.py": "import os, torch\nfrom pkg import sub\nfrom pkg.deep import leaf\n"
                    "def build():\n    import lazy\n    return None\n",
        "pkg/__init__.py": "from . import helpers\n",
        "pkg/helpers.py": "from ..outside import x\n",  # resolves above the root: not sent
        "pkg/sub.py": "try:\n    from .optional import fast\nexcept ImportError:\n    fast = None\n",
        "pkg/optional.py": "",
        "pkg/deep/leaf.py": "from .. import sub\n",  # a namespace package (no __init__) with a relative import
        "lazy.py": "def broken(:\n",  # does not parse: still sent, the check reports its syntax error
        "unused.py": "",
    }
    for path, text in files.items():
        (tmp_path / "repo" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "repo" / path).write_text(text)
    (tmp_path / "outside.py").write_text("")
    root = tmp_path / "repo"
    found = local_imports(root / "check.py", root, [root])
    assert _names(found, root) == {"pkg/__init__.py", "pkg/helpers.py", "pkg/sub.py", "pkg/optional.py",
                                   "pkg/deep/leaf.py", "lazy.py"}


def test_bundle_keeps_the_layout_and_adds_include(tmp_path: Path) -> None:
    root = _layout(tmp_path, "src_package")
    (root / "configs").mkdir()
    (root / "configs" / "tiny.yaml").write_text("hidden: 4\n")
    made = bundle(root / "checks/net_check.py", root, [root / "src"], [root / "configs/tiny.yaml"])
    assert made.entry == "checks/net_check.py" and made.pythonpath == ("src", ".")
    files = read_archive(made.archive)
    assert set(files) == {"checks/net_check.py", "configs/tiny.yaml", "src/mylib/__init__.py",
                          "src/mylib/net.py", "src/mylib/layers.py", "src/mylib/config.py"}
    assert files["src/mylib/config.py"] == "HIDDEN = 4\n"
    assert bundle(root / "checks/net_check.py", root, [root / "src"]).archive == \
        bundle(root / "checks/net_check.py", root, [root / "src"]).archive  # same files, same bytes

    (root / "src/mylib/weights.py").write_bytes(b"W = b'\xff\xfe'\n")
    (root / "src/mylib/net.py").write_text("from . import weights\n" + (root / "src/mylib/net.py").read_text())
    with pytest.raises(BundleError, match=r"src/mylib/weights.py: not UTF-8 text"):
        bundle(root / "checks/net_check.py", root, [root / "src"])


def _zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _tar(add: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info in add:
            archive.addfile(info, io.BytesIO(data[info.name]) if info.name in data else None)
    return buffer.getvalue()


def test_a_clean_zip_and_tar_are_read() -> None:
    files = {"check.py": b"def build(): ...\n", "pkg/m.py": b"X = 1\n"}
    assert read_archive(pack(files)) == {k: v.decode() for k, v in files.items()}
    info = tarfile.TarInfo("pkg/m.py")
    info.size = 6
    assert read_archive(_tar([info], {"pkg/m.py": b"X = 1\n"})) == {"pkg/m.py": "X = 1\n"}


@pytest.mark.parametrize(("archive", "problem"), [
    (_zip({"../escape.py": b""}), "../escape.py: unsafe path"),
    (_zip({"/etc/cron.d/x": b""}), "/etc/cron.d/x: unsafe path"),
    (_zip({"a\\..\\b.py": b""}), "unsafe path"),
    (_zip({"ok.py": b""}, symlink="link.py"), "link.py: a symbolic link"),
    (_zip({"bin.py": b"\xff\xfe\x00"}), "bin.py: not UTF-8 text"),
    (_zip({"nul.py": b"x = '\x00'"}), "nul.py: contains a NUL character"),
    (_zip({"pkg": b"", "pkg/m.py": b""}), "pkg: is both a file and a directory"),
    (b"just some bytes", "not a zip or gzip-compressed tar archive"),
    (pack({"a.py": b""})[:-10], "a damaged archive"),
    (_zip({}), "the archive holds no files"),
])
def test_hostile_zip_members_are_refused_by_name(archive: bytes, problem: str) -> None:
    with pytest.raises(ArchiveError) as caught:
        read_archive(archive)
    assert problem in str(caught.value)


def test_hostile_tar_members_are_refused_by_name() -> None:
    link = tarfile.TarInfo("link.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    hard = tarfile.TarInfo("hard.py")
    hard.type, hard.linkname = tarfile.LNKTYPE, "link.py"
    device = tarfile.TarInfo("dev.py")
    device.type = tarfile.CHRTYPE
    with pytest.raises(ArchiveError) as caught:
        read_archive(_tar([link, hard, device], {}))
    assert [path for path, _ in caught.value.problems] == ["link.py", "hard.py", "dev.py"]


def test_caps_are_counted_on_the_bytes_unpacked_not_the_headers() -> None:
    bomb = pack({"bomb.py": b"#" * (3 * 2**20)})  # 3 MiB of comment compresses to a few KiB
    assert len(bomb) < 20_000
    with pytest.raises(ArchiveError, match=r"bomb.py: larger than 2,097,152 bytes"):
        read_archive(bomb)
    many = pack({f"m{i}.py": b"" for i in range(6)})
    with pytest.raises(ArchiveError, match="more than 5 files"):
        read_archive(many, Limits(max_files=5))
    big = pack({f"m{i}.py": b"#" * 1000 for i in range(5)})
    with pytest.raises(ArchiveError, match="more than 3,000 bytes of files once unpacked"):
        read_archive(big, Limits(max_total_bytes=3000))


@pytest.mark.parametrize(("bomb", "problem"), [
    (tar_gz_bomb(), ("bomb.py", "larger than 2,097,152 bytes")),  # 1.5 GiB member: stops past the per-file limit
    (tar_gz_bomb(kind=b"Z"), ("", "more than 10,440,704 bytes once decompressed (the files' limit plus their tar "
                                  "headers)")),  # 1.5 GiB skipped over by its declared size: stops past the total
    (tar_gz_directory_bomb(), ("", "more than 500 directories")),  # a million headers of nothing
])
def test_tar_bombs_are_refused_at_the_first_byte_past_a_limit(bomb: bytes, problem: tuple[str, str]) -> None:
    """Reading stops at a limit instead of inflating the whole archive (9 s of CPU for the 1.5 GiB member once)."""
    assert len(bomb) < 3 * 2**20
    started = time.process_time()
    with pytest.raises(ArchiveError) as caught:
        read_archive(bomb)
    assert time.process_time() - started < 0.5
    assert caught.value.problems == [problem]


def test_write_files_checks_paths_again(tmp_path: Path) -> None:
    write_files({"pkg/m.py": "X = 1\n"}, tmp_path / "job")
    assert (tmp_path / "job/pkg/m.py").read_text() == "X = 1\n"
    with pytest.raises(ArchiveError, match="unsafe path"):
        write_files({"../../evil.py": ""}, tmp_path / "job")
    assert not (tmp_path / "evil.py").exists()


# --- the configuration of a repository ------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "a.py").write_text("def build(): ...\n")
    (tmp_path / "models" / "b.py").write_text("def build(): ...\n")
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "gradcheck.toml"
    path.write_text(text)
    return path


def test_models_as_paths_and_inline_tables(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'pythonpath = ["src"]\nmodels = ["models/a.py", '
                                 '{ path = "models/b.py", name = "bee", mode = "full", include = ["models/a.py"] }]\n'))
    assert [(m.name, m.options.mode) for m in config.models] == [("a", "default"), ("bee", "full")]
    assert config.pythonpath == [(tmp_path / "src").resolve()]


@pytest.mark.parametrize(("text", "expected"), [
    ("models = [3]\n", "gradcheck.toml: gradcheck.models[0]: expected a path such as \"models/encoder.py\" or a table with "
                       "a `path` key, not an integer"),
    ('models = ["models/c.py"]\n', "gradcheck.toml: gradcheck.models[0].path: models/c.py: no such file"),
    ('pythonpath = ["lib"]\nmodels = ["models/a.py"]\n', "gradcheck.toml: gradcheck.pythonpath[0]: lib: no such directory"),
    ('pythonpath = ["../elsewhere"]\nmodels = ["models/a.py"]\n',
     "gradcheck.toml: gradcheck.pythonpath[0]: ../elsewhere: must be a directory inside the repository"),
    ('models = [{ path = "models/a.py", include = ["configs/*.yaml"] }]\n',
     "gradcheck.toml: gradcheck.models[0].include[0]: configs/*.yaml: matches no file"),
])
def test_configuration_problems_are_said_once(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, text))
    assert str(caught.value).startswith(expected)
    assert str(caught.value).count(expected.split(": ", 2)[-1][:20]) == 1
