"""A repository of fused Triton kernels checked without a GPU: ``check`` in a fresh process and ``ci``.

Neither command is told about Triton: with CUDA absent, ``auto`` runs the kernels in Triton's interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.triton_repository import TritonRepository, triton_env
from tests.fixtures.triton_models import require_triton

require_triton()

pytestmark = pytest.mark.e2e


def _check(repo: TritonRepository, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "gradcheck-service"
    return subprocess.run([str(script), "check", *args], cwd=repo.root, env=triton_env(), capture_output=True,
                          text=True, timeout=300)


def test_check_in_a_fresh_process(tmp_path: Path) -> None:
    correct = _check(TritonRepository(tmp_path / "correct"), "checks/geglu_check.py")
    assert correct.returncode == 0, correct.stdout + correct.stderr
    assert "Triton kernels ran in Triton's interpreter on CPU" in correct.stdout
    assert "kernels.geglu.geglu_backward (float32)" in correct.stdout

    broken = _check(TritonRepository(tmp_path / "broken", bug="norm"), "checks/norm_check.py", "--json")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    assert report["localization"]["faulty_modules"] == ["norm"]
    kernels = report["gradient_check"]["interpreted_kernels"]
    assert {k["name"]: k["precision"] for k in kernels} == {"kernels.rmsnorm.rms_norm_forward": "float32",
                                                             "kernels.rmsnorm.rms_norm_backward": "float32"}


def test_check_with_the_interpreter_off_compiles_for_a_gpu_there_is_not(tmp_path: Path) -> None:
    off = _check(TritonRepository(tmp_path / "repo"), "checks/geglu_check.py", "--triton-interpreter", "off")
    assert off.returncode == 2, off.stdout + off.stderr
    # No driver here ("0 active drivers"); on a GPU machine the compiled kernel refuses the CPU tensors instead.
    assert "error: the model's forward/backward raised RuntimeError" in off.stderr


def test_ci_on_the_kernel_repository(tmp_path: Path) -> None:
    passed = TritonRepository(tmp_path / "correct").ci(env=triton_env())
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "norm_check: passed" in passed.stderr and "geglu_check: passed" in passed.stderr

    repo = TritonRepository(tmp_path / "broken", bug="geglu")
    failed = repo.ci(env=triton_env())
    assert failed.returncode == 1, failed.stdout + failed.stderr
    cases = {(s.get("name"), c.get("name")): c for s in ET.parse(repo.root / "reports" / "gradcheck.xml").getroot()
             .iter("testsuite") for c in s.iter("testcase")}
    failure = cases[("geglu_check", "localization")].find("failure")
    assert failure is not None and failure.get("message") == "faulty module: gate (defined in kernels.geglu)"
    assert cases[("norm_check", "localization")].find("failure") is None
