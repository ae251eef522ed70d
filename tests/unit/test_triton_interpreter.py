"""Triton's interpreter as the check uses it: the gaps it bridges, and kernels compiled before it was on.

The gap tests run ``tests/fixtures/triton_gaps.py`` in fresh processes: with ``TRITON_INTERPRET=1`` alone each gap
is there in the Triton the ``[triton]`` extra pins, and ``use_interpreter`` closes it. When a Triton release
closes a gap, its ``plain`` assertion fails: drop that bridge and widen the pin (``BRIDGED_VERSIONS``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.triton_models import REPOSITORY, require_triton

require_triton()

from gradcheck_service.triton_interpreter import _math_name, bridged_version  # noqa: E402

GAPS = Path(__file__).parents[1] / "fixtures" / "triton_gaps.py"


def _gaps(mode: str) -> dict[str, dict[str, str]]:
    done = subprocess.run([sys.executable, str(GAPS), mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def plain() -> dict[str, dict[str, str]]:
    return _gaps("plain")


def test_the_pinned_triton_has_the_gaps(plain: dict[str, dict[str, str]]) -> None:
    assert bridged_version(str(plain["triton"]))
    for dtype in ("float32", "float64"):
        assert "'float' object has no attribute 'to'" in plain["float_argument"][dtype]
        assert "cannot convert None" in plain["libdevice"][dtype]  # the libdevice stub returned None
    # To bfloat16, float32 is truncated (one bfloat16 unit) and float64 read as bfloat16's bits.
    assert plain["bfloat16_cast"]["float32"] == "differs by 0.00391"
    assert float(plain["bfloat16_cast"]["float64"].removeprefix("differs by ")) > 0.1
    # Two configurations are timed first, on the GPU's benchmarker.
    assert "0 active drivers" in plain["autotune"]["float32"]


def test_the_bridges_close_them_in_the_operands_dtype() -> None:
    bridged = _gaps("bridged")
    expected = {"float32": "ok", "float64": "ok"}  # exactly the compiled kernel's values, dtype by dtype
    assert bridged["float_argument"] == bridged["libdevice"] == bridged["bfloat16_cast"] == expected
    assert bridged["autotune"] == expected


def test_libdevice_symbols_map_to_their_math_function() -> None:
    assert [_math_name(s) for s in ("__nv_rsqrtf", "__nv_tanh", "__nv_fast_expf", "__nv_dadd_rn", "__nv_isnand",
                                    "__nv_erff", "__nv_fmaf_rn")] == ["rsqrt", "tanh", "exp", "add", "isnan", "erf",
                                                                     "fma"]
    # Directed rounding and integer tricks are not bridged: the kernel gets an error naming the symbol.
    assert [_math_name(s) for s in ("__nv_fadd_rz", "__nv_hadd", "__nv_popc")] == [None, None, None]


COMPILED_FIRST = textwrap.dedent('''
    import os, sys
    os.environ["TRITON_INTERPRET"] = "0"  # as on a GPU machine: Triton and the kernels compile for the GPU
    sys.path.insert(0, sys.argv[1])
    import torch
    from checks.norm_check import build
    from gradcheck_service import check

    report = check(*build(), memory=False)
    print(report.verdict, [k.name for k in report.gradient_check.interpreted_kernels])
''')


def test_kernels_decorated_for_the_gpu_run_interpreted_on_cpu_tensors() -> None:
    """Kernels (and Triton's own ``tl.sum``) decorated before the interpreter was on, or on a GPU machine, where
    the float64 reference still runs on the CPU: the check interprets each launch on CPU tensors."""
    done = subprocess.run([sys.executable, "-c", COMPILED_FIRST, str(REPOSITORY)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "passed"
    assert "'kernels.rmsnorm.rms_norm_forward'" in done.stdout and "'kernels.rmsnorm.rms_norm_backward'" in done.stdout
