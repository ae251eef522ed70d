"""What a submitted model file prints reaches its stored report and its run page, capped, on embedded serve.

The file runs in the sandboxed child; its prints (at build time, in forward, from a child process) must end up in
``report.output`` rather than in the worker's logs only, and the dashboard shows them escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from tests.service_support import (
    ServiceProcess,
    cli,
    free_port,
    service_env,
    signed_in_opener,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

PRINTING_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "printing_model.py"


def test_prints_of_a_model_file_land_in_the_report_and_on_the_run_page(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = service_env(DATA_DIR=str(data_dir))
    made = cli(["token", "create", "--project", "demo"], env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    flood = tmp_path / "flood.py"
    flood.write_text(PRINTING_MODEL.read_text().replace("EXTRA_BYTES = 0", "EXTRA_BYTES = 10 * 2**20"))

    port = free_port()
    server = ServiceProcess(["serve", "--port", str(port), "--workers", "1"], env, tmp_path / "serve.log")
    try:
        wait_until_ready(port, 90, "the embedded server to be ready")
        url = f"http://127.0.0.1:{port}"

        def submit(path: Path) -> dict:  # type: ignore[type-arg]
            done = cli(["submit", str(path), "--server", url, "--token", token, "--wait", "--json",
                        "--options", '{"health": false, "memory": false}'], env, timeout=240)
            assert done.returncode == 0, done.stdout + done.stderr
            return dict(json.loads(done.stdout))

        run = submit(PRINTING_MODEL)
        output = run["report"]["output"]
        for text in ("number of parameters: 8", "a child process of build()", "model built <b>as text</b>",
                     "forward on stderr", "forward at the fd level"):
            assert text in output, output

        page = signed_in_opener(url, token).open(f"{url}/runs/{run['id']}", timeout=10).read().decode()
        section = page.split('id="model-output"', 1)[1].split("</section>", 1)[0]
        assert "<details>" in section and "forward at the fd level" in section
        assert html.escape("model built <b>as text</b>", quote=False) in section and "<b>as text" not in section

        capped = submit(flood)["report"]["output"]
        assert len(capped.encode()) < 66 * 1024 and "bytes of output left out" in capped
        assert capped.startswith("a child process of build()") and "forward at the fd level" in capped[-1000:]
    finally:
        server.stop()
    assert "Traceback" not in server.output(), server.output()[-3000:]
