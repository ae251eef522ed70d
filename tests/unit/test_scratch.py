"""Scratch folders of workers: removed when their owner process dies, whatever killed it, never while it lives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gradcheck_service.service.jobs import scratch

# A process that makes a job folder, says where, and waits to be killed.
_OWNER = """
import sys, time
from gradcheck_service.service.jobs import scratch
print(scratch.make("job", "abc-"), flush=True)
time.sleep(60)
"""


def _owner(root: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(root)})
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_owners_folder_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    killed, orphan = _owner(tmp_path)
    alive, held = _owner(tmp_path)
    try:
        (orphan / "job.json").write_text("{}")
        assert orphan.name.startswith("gradcheck-job-abc-") and orphan.parent == tmp_path
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        mine = scratch.make("home")  # held by this process
        unrelated = tmp_path / "gradcheck-load-x"  # not a scratch folder kind
        unrelated.mkdir()
        assert scratch.remove_orphans(tmp_path) == [orphan]
        assert not orphan.exists() and held.is_dir() and unrelated.is_dir()
        scratch.remove(mine)
        assert not mine.exists()
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    assert scratch.remove_orphans(tmp_path) == [held]
