"""The `silobreak` command line: the root group, and every command module's commands on it.

The command modules never import this package back: what they share is in `common`.
"""

from __future__ import annotations

import logging
import sys

import click

from silobreak.cli import (
    bench,
    broker,
    docs,
    grafana,
    identity,
    orgs,
    principals,
    rejects,
    run,
    store,
    streams,
)
from silobreak.cli.common import ErrorTranslatingGroup

logger = logging.getLogger(__name__)


@click.group(cls=ErrorTranslatingGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """silobreak: telemetry from a city's shared sensors, governed across its services."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # httpx logs every request at INFO: a line per SSE reconnect or API call would bury
        # the command's own output (`subscribe` prints readings on stdout, notes on stderr).
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


for _module in (
    bench, broker, docs, grafana, identity, orgs, principals, rejects, run, store, streams,
):  # fmt: skip
    for _command in _module.COMMANDS:
        main.add_command(_command)
