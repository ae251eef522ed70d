"""Fused Triton kernels checked by the embedded service: ``ci --server`` on a kernel repository, no GPU anywhere.

The model files run in the sandboxed child, which switches Triton's interpreter on itself (its environment is
still the scrubbed one: no setting of the server reaches it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.triton_repository import TritonRepository, triton_env
from tests.fixtures.triton_models import require_triton
from tests.service_support import ServiceProcess, api_get, cli, free_port, service_env, wait_until_ready

require_triton()

pytestmark = pytest.mark.integration

ENV_CHECK = '''
import os

from geglu_check import build as build_geglu


def build():
    print("TRITON_INTERPRET=" + os.environ.get("TRITON_INTERPRET", "unset"))
    print("ENV=" + ",".join(sorted(os.environ)))
    return build_geglu()
'''


def test_kernel_repository_through_the_embedded_service(tmp_path: Path) -> None:
    env = service_env(DATA_DIR=str(tmp_path / "data"))
    env.pop("TRITON_INTERPRET", None)
    made = cli(["token", "create", "--project", "kernels"], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    repo = TritonRepository(tmp_path / "repo", bug="norm")
    (repo.root / "checks" / "env_check.py").write_text(ENV_CHECK)
    (repo.root / "gradcheck.toml").write_text('models = ["checks/norm_check.py", "checks/env_check.py"]\n')
    repo.commit("a model that shows its environment")

    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"],
                            {**env, "KERNEL_REGISTRY_TOKEN": "do-not-leak"}, tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, 90, "the embedded server to be ready")
        done = repo.ci("--server", url, env=triton_env(GRADCHECK_TOKEN=token))
        assert done.returncode == 1, done.stdout + done.stderr
        runs = {r["model"]["name"]: r for r in api_get(f"{url}/api/v1/runs?branch=main", token)["runs"]}
        failed = api_get(f"{url}/api/v1/runs/{runs['norm_check']['id']}", token)
        passed = api_get(f"{url}/api/v1/runs/{runs['env_check']['id']}", token)
    finally:
        server.stop()
    assert failed["status"] == "failed" and failed["report"]["localization"]["faulty_modules"] == ["norm"]
    kernels = failed["report"]["gradient_check"]["interpreted_kernels"]
    assert {k["name"] for k in kernels} == {"kernels.rmsnorm.rms_norm_forward", "kernels.rmsnorm.rms_norm_backward"}
    assert passed["status"] == "passed", passed
    output = passed["report"]["output"]
    assert "TRITON_INTERPRET=1" in output and "KERNEL_REGISTRY_TOKEN" not in output and "GRADCHECK_" not in output
    assert {k["name"] for k in passed["report"]["gradient_check"]["interpreted_kernels"]} == {
        "kernels.geglu.geglu_forward", "kernels.geglu.geglu_backward"}
    assert "Traceback" not in server.output(), server.output()[-3000:]
