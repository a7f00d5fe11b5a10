"""`silobreak docs devices`: documentation generated from the code."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click

from silobreak.errors import CommandFailed


@click.group()
def docs() -> None:
    """Generated documentation."""


@docs.command("devices")
@click.option("--check", is_flag=True, help="Fail when the file differs from the catalog.")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/devices.md")
)
def docs_devices(check: bool, output: Path) -> None:
    """Write docs/devices.md from the device catalog."""
    from devices.docs import render  # noqa: PLC0415

    text = render()
    if check:
        if not output.is_file() or output.read_text(encoding="utf-8") != text:
            raise CommandFailed(f"{output} is out of date: run `silobreak docs devices`")
        click.echo(f"{output} matches the catalog")
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


COMMANDS: Final[tuple[click.Command, ...]] = (docs,)
