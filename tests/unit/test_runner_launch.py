"""The check child: both launchers run a job, enforce the wall time, survive a crash, and keep secrets out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gradcheck_service.service.jobs.launcher import ForkServerLauncher, SpawnLauncher, child_env
from tests.service_support import SLOW_MODEL, TINY_SPEC


def _job(tmp_path: Path, name: str, definition: str, source: str, **options: object) -> Path:
    job = tmp_path / name
    job.mkdir()
    (job / definition).write_text(source)
    (job / "job.json").write_text(json.dumps({"definition": definition, "options": options, "name": name}))
    return job


@pytest.fixture(params=["spawn", "fork"])
def launcher(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    chosen = SpawnLauncher() if request.param == "spawn" else ForkServerLauncher()
    yield chosen
    chosen.close()


def test_launchers_run_checks_time_out_and_survive_crashes(tmp_path: Path, launcher) -> None:  # type: ignore[no-untyped-def]
    beats: list[tuple[str | None, float | None]] = []

    def progress(stage: str | None, fraction: float | None) -> bool:
        beats.append((stage, fraction))
        return True

    ok = launcher.run(_job(tmp_path, "ok", "model.json", json.dumps(TINY_SPEC), mode="full"), 120, progress,
                      heartbeat_s=0.2, max_bytes=10**7)
    assert ok.result is not None and ok.result.report is not None and ok.result.report["passed"] is True, ok
    assert beats, "no heartbeat was sent while the check ran"

    slow = launcher.run(_job(tmp_path, "slow", "model.py", SLOW_MODEL.replace("{sleep}", "60")), 1.5, progress,
                        heartbeat_s=0.2, max_bytes=10**7)
    assert slow.result is None and slow.error_code == "time_limit"

    crash = launcher.run(_job(tmp_path, "crash", "model.py", "import os\n\ndef build():\n    os._exit(7)\n"),
                         60, progress, heartbeat_s=0.2, max_bytes=10**7)
    assert crash.result is None and crash.error_code == "child_crashed" and "code 7" in crash.error

    again = launcher.run(_job(tmp_path, "again", "model.json", json.dumps(TINY_SPEC)), 120, progress,
                         heartbeat_s=0.2, max_bytes=10**7)
    assert again.result is not None and again.result.report is not None  # the launcher still works after all that

    big = launcher.run(_job(tmp_path, "big", "model.json", json.dumps(TINY_SPEC)), 120, progress,
                       heartbeat_s=0.2, max_bytes=100)
    assert big.error_code == "report_too_large" and "100 bytes" in big.error


def test_abandoned_check_is_stopped(tmp_path: Path) -> None:
    launcher = ForkServerLauncher()
    try:
        outcome = launcher.run(_job(tmp_path, "gone", "model.py", SLOW_MODEL.replace("{sleep}", "60")), 60,
                               lambda stage, fraction: False, heartbeat_s=0.1, max_bytes=10**7)
        assert outcome.error_code == "abandoned"
    finally:
        launcher.close()


def test_child_environment_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADCHECK_DATABASE_URL", "postgresql://secret")
    monkeypatch.setenv("GRADCHECK_TOKEN", "gcs_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    env = child_env(tmp_path)
    assert not [name for name in env if name.startswith("GRADCHECK") or "SECRET" in name]
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path)
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("written", [
    '{"report": {"passed": true}, "error": {"code": "x", "message": "y"}}',  # both
    "{}",  # neither
    '{"error": {"code": 7}}',  # an error without its message, a code of the wrong type
    '{"report": {"passed": true}, "admin": true}',  # a field the protocol does not have
    "[1, 2]",
])
def test_a_result_the_child_wrote_in_the_wrong_shape_is_a_bad_result(tmp_path: Path, written: str) -> None:
    """The child runs the user's model, which can write anything where the result goes: the worker reads it as the
    protocol's Result or answers bad_result, never with a KeyError or a half-read run."""
    from gradcheck_service.service.jobs.launcher import read_result

    (tmp_path / "result.json").write_text(written)
    outcome = read_result(tmp_path, 2**20, "exited with code 0")
    assert outcome.result is None and outcome.error_code == "bad_result", outcome
    assert "wrong shape" in (outcome.error or "")
