"""The root error of the shell (the `silobreak` command line and process wiring)."""

from __future__ import annotations

import click


class SilobreakError(Exception):
    """Something the command line or the wiring of the platform's processes ran into."""


class CommandFailed(SilobreakError, click.ClickException):
    """A command cannot do what was asked: one line on stderr, exit status 1 (as click's)."""
