"""The `check` command as a CI job sees it: exit codes, one-line errors, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradcheck_service.cli import main
from gradcheck_service.report import SCHEMA_PATH, Report, report_json_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUICK = ["--no-memory", "--no-health"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from gradcheck_service.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_passing_model_exits_0_and_prints_the_table() -> None:
    result = CliRunner().invoke(main, ["check", str(EXAMPLES / "mlp.json"), *QUICK])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "layers.0.weight" in result.output


def test_failing_model_exits_1_and_names_the_faulty_module() -> None:
    result = CliRunner().invoke(main, ["check", str(EXAMPLES / "buggy_custom_function.py"), *QUICK])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "blocks.1.activation" in result.output


def test_json_output_is_the_report_and_nothing_else() -> None:
    proc = run("check", str(EXAMPLES / "buggy_custom_function.py"), "--json", *QUICK)
    assert proc.returncode == 1
    report = Report.model_validate_json(proc.stdout)
    assert report.localization.faulty_modules == ["blocks.1.activation"]
    assert not report.passed and report.schema_version


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["does/not/exist.py"], "does/not/exist.py"),
        (["{bad_spec}"], "$.layers[0]"),
        (["{raising}"], "boom"),
        (["{mlp}", "--memory-budget", "lots"], "lots"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path: Path, args: list[str], expected: str) -> None:
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text(json.dumps({"input": {"shape": [2, 3]}, "layers": [{"type": "linear", "out_features": -1}]}))
    raising = tmp_path / "raising.py"
    raising.write_text("def build():\n    raise RuntimeError('boom')\n")
    paths = {"bad_spec": str(bad_spec), "raising": str(raising), "mlp": str(EXAMPLES / "mlp.json")}
    proc = run("check", *[a.format(**paths) for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_fail_on_turns_a_diagnosis_into_exit_1() -> None:
    spec = str(EXAMPLES / "deep_sigmoid.json")
    assert CliRunner().invoke(main, ["check", spec, "--mode", "fast", "--no-memory"]).exit_code == 0
    result = CliRunner().invoke(main, ["check", spec, "--mode", "fast", "--no-memory", "--fail-on", "vanishing"])
    assert result.exit_code == 1 and "vanishing" in result.output


def test_committed_json_schema_matches_the_report_model() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == report_json_schema(), (
        "regenerate with: python -m gradcheck_service.report"
    )


PRINTING_MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "printing_model.py"
MODEL_PRINTS = ["number of parameters: 8", "a child process of build()", "model built", "forward on stderr",
                "forward at the fd level"]


def test_json_stays_one_document_when_the_model_prints() -> None:
    proc = run("check", str(PRINTING_MODEL), "--json", *QUICK)
    assert proc.returncode == 0, proc.stderr
    report = Report.model_validate_json(proc.stdout)
    assert report.output is not None
    for text in MODEL_PRINTS:
        assert text in report.output
        assert text not in proc.stderr
    assert report.output.index("number of parameters") < report.output.index("forward on stderr")


def test_table_shows_what_the_model_printed() -> None:
    result = CliRunner().invoke(main, ["check", str(PRINTING_MODEL), *QUICK])
    assert result.exit_code == 0, result.output
    verdict, _, section = result.output.partition("Output of the model's code")
    assert "PASSED" in verdict and "forward on stderr" not in verdict
    assert "  | forward at the fd level" in section and "last 20 shown" in section


def test_ten_megabytes_of_prints_are_capped_to_head_and_tail(tmp_path: Path) -> None:
    flood = tmp_path / "flood.py"
    flood.write_text(PRINTING_MODEL.read_text().replace("EXTRA_BYTES = 0", "EXTRA_BYTES = 10 * 2**20"))
    proc = run("check", str(flood), "--json", *QUICK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = Report.model_validate_json(proc.stdout).output
    assert output is not None and len(output.encode()) < 66 * 1024
    assert output.startswith("a child process of build()\nnumber of parameters: 8\n")
    assert "bytes of output left out" in output
    assert "forward at the fd level" in output[-1000:]


RESEEDING_MODEL = '''
import os

import torch
from torch import nn


class Reseeding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        # a dropout mask seeded from the OS on every call, behind the check's back: no two evaluations agree
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
        return nn.functional.dropout(self.lin(x), 0.3, training=True)


def build():
    return Reseeding(), (torch.randn(3, 4),)
'''


def test_inconclusive_exits_1_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "reseeding.py"
    path.write_text(RESEEDING_MODEL)
    result = CliRunner().invoke(main, ["check", str(path), *QUICK])
    assert result.exit_code == 1, result.output
    assert "INCONCLUSIVE" in result.output and "not reproducible" in result.output
    allowed = CliRunner().invoke(main, ["check", str(path), "--allow-inconclusive", *QUICK])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize("flag", [[], ["--recheck"]], ids=["local-report", "recheck"])
def test_recheck_flag_asks_for_the_whole_model_re_check(flag: list[str]) -> None:
    result = CliRunner().invoke(main, ["check", str(EXAMPLES / "buggy_custom_function.py"), "--json", *flag, *QUICK])
    assert result.exit_code == 1, result.output
    report = Report.model_validate_json(result.output)
    assert report.options.recheck == bool(flag)
    assert report.gradient_check.strategy == ("global" if flag else "local")
    assert report.localization.faulty_modules == ["blocks.1.activation"]
