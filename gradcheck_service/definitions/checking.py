"""Load a definition and check it, with what its code prints captured into the report: the one way ``check``,
``ci`` and the service's sandboxed child run a model file or a spec."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import load_definition
from .output_capture import CapturedOutput, output_or_none

if TYPE_CHECKING:
    from ..checks.engine import Progress
    from ..options import CheckOptions
    from ..report import Report

# Given the terminal (the stderr from before the capture), a context that yields the progress callback, or None.
ProgressDisplay = Callable[[TextIO], AbstractContextManager["Progress | None"]]


def check_definition(
    path: str | Path,
    import_paths: Sequence[str | Path],
    options: CheckOptions,
    *,
    name: str | None = None,
    captured: CapturedOutput | None = None,
    progress: ProgressDisplay | None = None,
) -> Report:
    """Load the model file or spec at ``path`` and check it; return the report, its ``output`` set to what the
    model's code printed while it was loaded, built and checked.

    Whatever the code prints goes into ``captured`` (a new capture when None; closed here, its ``text`` stays for
    the caller), never onto our stdout, so ``--json`` stays one JSON document and the CI job's stdout its summary.
    Raises :class:`~gradcheck_service.definitions.DefinitionError` when the definition cannot be loaded (nothing
    was checked), and whatever the check or the model's own code raises while it runs.
    """
    from ..checks.engine import check
    from ..triton_interpreter import use_interpreter

    use_interpreter(options.triton_interpreter)  # Triton's choice is made when the model's code imports it
    captured = captured or CapturedOutput()
    try:
        with captured:
            definition = load_definition(str(path), import_paths)
        with captured:
            # The display draws on the terminal the capture keeps open for it while it is entered.
            display = progress(captured.terminal) if progress is not None else contextlib.nullcontext(None)
            with display as on_progress:
                report = check(definition.module, definition.inputs, definition.loss_fn, progress=on_progress,
                               name=name or definition.name, options=options)
    finally:
        captured.close()
    report.output = output_or_none(captured.text)
    return report
