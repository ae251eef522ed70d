"""Capturing what the model's code prints: every way of writing is caught, our own streams come back, the cap."""

from __future__ import annotations

import ctypes
import io
import os
import subprocess
import sys
from pathlib import Path

from gradcheck_service.definitions.output_capture import CapturedOutput, read_capped


def test_print_fd_writes_c_writes_and_child_processes_are_caught_in_order(capfd) -> None:  # type: ignore[no-untyped-def]
    libc = ctypes.CDLL(None)
    with CapturedOutput() as captured:
        print("print to stdout")
        print("print to stderr", file=sys.stderr)
        os.write(2, b"raw write to fd 2\n")
        libc.puts(b"C puts")
        libc.fflush(None)
        subprocess.run([sys.executable, "-c", "print('child process')"], check=True)
    captured.close()
    assert captured.text == "print to stdout\nprint to stderr\nraw write to fd 2\nC puts\nchild process\n"
    print("ours again")
    seen = capfd.readouterr()
    assert seen.out == "ours again\n" and seen.err == ""


def test_entering_again_appends_and_the_file_stays_in_the_job_directory(tmp_path: Path) -> None:
    captured = CapturedOutput(tmp_path / "output.txt")
    with captured:
        print("while loading")
    with captured:
        print("while checking")
    captured.close()
    assert captured.text == "while loading\nwhile checking\n"
    assert (tmp_path / "output.txt").read_text() == captured.text


def test_the_terminal_stream_bypasses_the_capture(capfd) -> None:  # type: ignore[no-untyped-def]
    with CapturedOutput() as captured:
        captured.terminal.write("progress\n")
        captured.terminal.flush()
    captured.close()
    assert captured.text == "" and capfd.readouterr().err == "progress\n"


def test_cap_keeps_head_and_tail_and_replaces_bad_bytes() -> None:
    data = b"\xff head " + b"x" * 200_000 + b" tail\n"
    text, size = read_capped(io.BytesIO(data), 1024)
    assert size == len(data) and len(text) < 1200
    assert text.startswith("\ufffd head ") and text.endswith(" tail\n")
    assert f"[... {len(data) - 1024:,} bytes of output left out ...]" in text
