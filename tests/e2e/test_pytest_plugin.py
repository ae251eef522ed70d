"""The pytest helper, through pytest itself: `assert_gradients_ok` and the `gradcheck` fixture (entry point
`pytest11`, so the plugin is found by installation alone), on a failing and a passing model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.ml_repository import BROKEN_MODEL, GOOD_MODEL

pytestmark = pytest.mark.e2e

TESTS = '''
import torch
from torch import nn

from gradcheck_service.testing import assert_gradients_ok
from broken import build as build_broken
from good import build as build_good


def test_good_model_helper():
    model, x = build_good()
    report = assert_gradients_ok(model, x)
    assert report.passed


def test_good_model_fixture(gradcheck):
    model, x = build_good()
    report = gradcheck(model, x)
    print("MODE", report.gradient_check.mode)


def test_broken_model_helper():
    model, x = build_broken()
    assert_gradients_ok(model, x)


def test_broken_model_fixture(gradcheck):
    model, x = build_broken()
    gradcheck(model, x, loss_fn=lambda out, inp: (out ** 2).sum())
'''


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -p no:cacheprovider keeps the tmp dir clean; the plugin itself is not named: its entry point loads it.
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-o", "addopts=",
                           "--rootdir", str(directory), *args], cwd=directory, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "broken.py").write_text(BROKEN_MODEL)
    (tmp_path / "good.py").write_text(GOOD_MODEL.format(hidden=4))
    (tmp_path / "test_models.py").write_text(TESTS)
    (tmp_path / "conftest.py").write_text("import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__)"
                                          ".parent))\n")
    return tmp_path


def test_failing_and_passing_models_through_pytest(suite: Path) -> None:
    done = _pytest(suite, "--gradcheck-mode", "full")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "2 failed, 2 passed" in out
    assert "test_good_model" not in out.split("= FAILURES =", 1)[1]
    assert "MODE full" in out  # --gradcheck-mode reached the fixture
    for test, mode in (("test_broken_model_helper", "default"), ("test_broken_model_fixture", "full")):
        section = out.split(f" {test} ___", 1)[1].split("\n___", 1)[0]
        assert f"AssertionError: gradients of Net are wrong ({mode} mode, float64)" in section
        assert "faulty module: encoder.act" in section
        # the class comes from the repository's broken.py: the failure says so
        assert "module encoder.act (ScaledTanh, defined in broken): its own backward is wrong" in section
        if mode == "full":  # every tensor through the whole model: the parameters upstream of the bug fail
            assert "parameter encoder.proj.weight: max abs error" in section
        else:  # each parameter through its own module (right there); the wrong gradient shows upstream of it
            assert "input input[0]: max abs error" in section and "joint probes over every parameter" in section
        assert "parameter head.weight" not in section
        assert "pytest_plugin.py" not in section  # the traceback points at the test, not at the helper


def test_mode_from_ini_and_bad_mode(suite: Path) -> None:
    (suite / "pytest.ini").write_text("[pytest]\ngradcheck_mode = fast\n")
    done = _pytest(suite, "-k", "good_model_fixture")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MODE fast" in done.stdout
    rejected = _pytest(suite, "--gradcheck-mode", "quick")
    assert rejected.returncode == 4 and "--gradcheck-mode" in rejected.stderr
