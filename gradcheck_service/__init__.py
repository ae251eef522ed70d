"""gradcheck-service: is my backward pass right, and is my model healthy to train?

Library entry point::

    from gradcheck_service import check
    report = check(model, inputs)            # -> Report
    assert report.passed, report.localization.faulty_modules
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
PACKAGE_DIR = Path(__file__).resolve().parent  # the installed package (what the sandbox mounts for its child)
__all__ = ["check", "CheckOptions", "Report", "create_app", "__version__"]

if TYPE_CHECKING:
    from .options import CheckOptions
    from .report import Report


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import gradcheck_service` cheap (the CLI and the web app start fast) and avoid cycles.
    if name == "check":
        from .checks.engine import check

        return check
    if name == "CheckOptions":
        from .options import CheckOptions

        return CheckOptions
    if name == "Report":
        from .report import Report

        return Report
    if name == "create_app":
        from .service.app import create_app

        return create_app
    raise AttributeError(name)
