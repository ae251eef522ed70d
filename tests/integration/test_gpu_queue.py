"""Runs asking for CUDA never run on a CPU worker: real Celery workers on Redis + PostgreSQL.

A worker started with the default queues consumes only ``cpu`` (on its own exchange); a CUDA run waits on ``gpu``
while that worker sits idle; a ``gpu`` worker refuses to start on a machine without CUDA, and where the machine
has CUDA it starts and runs the waiting check on the GPU.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from gradcheck_service.service.extensions import machine_has_cuda
from tests.integration.service_fixtures import Service
from tests.integration.test_service_redis_pg import Api
from tests.service_support import (
    ServiceProcess,
    cli,
    free_port,
    service_env,
    spec,
    wait_until,
    wait_until_ready,
)

pytestmark = pytest.mark.integration


def _submit(api: Api, device: str) -> str:
    response = api.client.post("/api/v1/runs", json={"spec": spec(), "options": {"device": device}},
                               headers=api.headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["queue"] == ("gpu" if device == "cuda" else "cpu")
    return str(response.get_json()["id"])


def test_a_cuda_run_waits_for_a_gpu_worker_and_never_runs_on_a_cpu_worker(redis_pg_service: Service) -> None:
    api = Api(redis_pg_service)
    worker = redis_pg_service.worker("cpuonly")  # the default queues, as `gradcheck-service worker` starts
    gpu_worker = None
    try:
        celery = api.app.extensions["celery"]
        answer = wait_until(lambda: celery.control.inspect(timeout=3).active_queues(), 30, "the worker to answer")
        queues = next(queues for node, queues in answer.items() if node.startswith("cpuonly@"))
        assert [(q["name"], q["exchange"]["name"], q["routing_key"]) for q in queues] == [("cpu", "cpu", "cpu")]
        assert ".> cpu              exchange=cpu(direct) key=cpu" in worker.output()
        assert ".> gpu" not in worker.output()

        on_gpu = _submit(api, "cuda")
        on_cpu = _submit(api, "cpu")
        assert api.wait(on_cpu)["status"] == "passed"
        assert api.run(on_gpu)["status"] == "queued"  # the CPU worker is idle and still did not take it
        broker = redis.Redis.from_url(redis_pg_service.settings["BROKER_URL"])
        prefix = redis_pg_service.settings["BROKER_KEY_PREFIX"]
        try:
            assert broker.llen(f"{prefix}gpu") == 1
            # the gpu queue is bound to an exchange of its own, not to the cpu queue's
            assert any(b"gpu" in member for member in broker.smembers(f"{prefix}_kombu.binding.gpu"))
            assert not any(b"gpu" in member for member in broker.smembers(f"{prefix}_kombu.binding.cpu"))
        finally:
            broker.close()

        if not machine_has_cuda():
            refused = cli(["worker", "--queues", "gpu"], redis_pg_service.env(), timeout=120)
            assert refused.returncode == 2
            assert "no usable CUDA device" in refused.stderr and "--queues cpu" in refused.stderr
            assert api.run(on_gpu)["status"] == "queued"
        else:  # a machine with a GPU: a gpu worker takes the waiting run and checks it on the device
            gpu_worker = redis_pg_service.worker("gpu", "--queues", "gpu")
            assert ".> gpu              exchange=gpu(direct) key=gpu" in gpu_worker.output()
            run = api.wait(on_gpu, timeout=300)
            assert run["status"] == "passed", run
            assert run["report"]["memory"]["device"].startswith("cuda")
    finally:
        worker.stop()
        if gpu_worker is not None:
            gpu_worker.stop()
    assert "Traceback" not in worker.output(), worker.output()[-3000:]


def _post(url: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def test_the_embedded_worker_takes_cuda_runs_only_where_the_machine_has_cuda(tmp_path: Path) -> None:
    # GRADCHECK_GPU_WORKERS=true: the API queues CUDA runs even where the embedded worker cannot take them (without
    # it they are refused with a 422 on a machine without CUDA; tests/unit/test_api_submit.py).
    env = service_env(DATA_DIR=str(tmp_path / "data"), GPU_WORKERS=True)
    token = cli(["token", "create", "--project", "gpu-queue"], env).stdout.strip().splitlines()[-1]
    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    try:
        wait_until_ready(port, 90, "the embedded server to be ready")
        runs = f"http://127.0.0.1:{port}/api/v1/runs"
        status, on_gpu = _post(runs, token, {"spec": spec(), "options": {"device": "cuda"}})
        assert status == 202 and on_gpu["queue"] == "gpu", on_gpu
        status, on_cpu = _post(runs, token, {"spec": spec()})
        assert status == 202 and on_cpu["queue"] == "cpu", on_cpu
        wait_until(lambda: _get(f"{runs}/{on_cpu['id']}", token)["status"] == "passed", 120, "the cpu run")
        if machine_has_cuda():
            run = wait_until(lambda: (r := _get(f"{runs}/{on_gpu['id']}", token))["status"] == "passed" and r,
                             300, "the cuda run")
            assert run["report"]["memory"]["device"].startswith("cuda")
        else:
            assert _get(f"{runs}/{on_gpu['id']}", token)["status"] == "queued"
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
