"""The rules of silobreak/cli/: command modules never import the package that registers them."""

from __future__ import annotations

import ast
from pathlib import Path

import click

import silobreak.cli

_PACKAGE = Path(silobreak.cli.__file__).parent


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_command_modules_import_shared_helpers_from_common_never_the_package() -> None:
    modules = [p for p in _PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) > 5
    offenders = [p.name for p in modules if "silobreak.cli" in _imported(p)]
    assert offenders == []


def test_every_bench_subcommand_is_in_the_bench_module() -> None:
    bench = silobreak.cli.main.commands["bench"]
    assert isinstance(bench, click.Group)
    callbacks = {name: cmd.callback for name, cmd in bench.commands.items()}
    assert set(callbacks) >= {"fanout", "import", "ingest", "overload", "simulator", "store"}
    assert {c.__module__ for c in callbacks.values() if c} == {"silobreak.cli.bench"}
