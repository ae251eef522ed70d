"""pytest plugin (entry point ``pytest11``): a ``gradcheck`` fixture and the ``--gradcheck-mode`` option.

    def test_backward(gradcheck):
        gradcheck(MyNet(), torch.randn(4, 8))          # assert_gradients_ok with the session's mode

``pytest --gradcheck-mode full`` checks every coordinate (slower, e.g. nightly); ``fast`` probes only. Without the
option the engine's ``default`` mode is used, or the ``gradcheck_mode`` ini setting. In a repository with a
gradcheck configuration its root and ``pythonpath`` folders are importable, as in ``gradcheck-service ci``. Triton
kernels run in Triton's interpreter on CPU when CUDA is absent (``--gradcheck-triton-interpreter on|off`` or the
``gradcheck_triton_interpreter`` ini setting to choose), decided before the tests import Triton. Loading the plugin
imports nothing heavy: torch and the engine are imported on the fixture's first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradcheck", "gradient checks (gradcheck-service)")
    from .options import choices, help_text

    group.addoption("--gradcheck-mode", choices=choices("mode"), default=None,
                    help=f"Coverage of the gradcheck fixture. {help_text('mode')}")
    parser.addini("gradcheck_mode", f"Default coverage of the gradcheck fixture ({', '.join(choices('mode'))}).",
                  default="default")
    group.addoption("--gradcheck-triton-interpreter", choices=choices("triton_interpreter"), default=None,
                    help=f"Triton kernels of the session. {help_text('triton_interpreter')}")
    parser.addini("gradcheck_triton_interpreter", "Triton kernels in Triton's interpreter on CPU "
                  f"({', '.join(choices('triton_interpreter'))}).", default="auto")


def pytest_configure(config: pytest.Config) -> None:
    """Decide between Triton's interpreter and compiled kernels before any test module imports Triton (see
    ``gradcheck_service.triton_interpreter``; nothing is imported unless Triton is).

    In a repository configured for gradcheck (``[tool.gradcheck]`` or ``gradcheck.toml`` at pytest's rootdir),
    make its root and its ``pythonpath`` folders importable, as ``gradcheck-service ci`` does, so a test can
    ``from model import GPT`` wherever the test file lives. Other repositories are left alone."""
    import sys

    from .ci.config import ConfigError, find_config, import_roots
    from .triton_interpreter import use_interpreter

    use_interpreter(_triton_setting(config))
    try:
        if find_config(config.rootpath) is None:
            return
        roots = import_roots(config.rootpath)
    except ConfigError:
        return  # an unreadable configuration is reported by `ci`, not by every test session
    for folder in reversed(roots):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def _setting(config: pytest.Config, field: str, default: str) -> str:
    """The session's value of a ``CheckOptions`` field: ``--gradcheck-<field>``, else the ``gradcheck_<field>`` ini
    setting, else ``default``."""
    from .options import choices

    value = config.getoption(f"--gradcheck-{field.replace('_', '-')}") or config.getini(f"gradcheck_{field}") or default
    if value not in choices(field):
        raise pytest.UsageError(f"gradcheck_{field} = {value!r}: use one of {', '.join(choices(field))}")
    return str(value)


def _mode(config: pytest.Config) -> str:
    return _setting(config, "mode", "default")


def _triton_setting(config: pytest.Config) -> Any:
    return _setting(config, "triton_interpreter", "auto")


@pytest.fixture
def gradcheck(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``gradcheck(model, inputs, loss_fn=None, **options)``: assert the model's gradients are right.

    Options default to the session's ``--gradcheck-mode``; an explicit ``mode=`` wins. Returns the report.
    """
    mode = _mode(request.config)
    triton_interpreter = _triton_setting(request.config)

    def run(model: Any, inputs: Any, loss_fn: Any = None, **options: Any) -> Any:
        from .testing import assert_gradients_ok

        __tracebackhide__ = True  # the failure points at the test's call, not inside this helper
        options.setdefault("mode", mode)
        options.setdefault("triton_interpreter", triton_interpreter)
        return assert_gradients_ok(model, inputs, loss_fn, **options)

    return run
