"""The ``gradcheck-service`` command: one click group; each concern adds its commands from its own module."""

from __future__ import annotations

import importlib

import click

from .. import __version__

# Modules that each define ``commands: list[click.Command]``; imported when the group is built.
COMMAND_MODULES = (
    "gradcheck_service.cli.check",
    "gradcheck_service.cli.submit",
    "gradcheck_service.service.commands",
    "gradcheck_service.ci.cli",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradcheck-service")
def main() -> None:
    """Gradient checks, gradient-health diagnosis and memory profiles for PyTorch models."""


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).commands:
        main.add_command(_command)
