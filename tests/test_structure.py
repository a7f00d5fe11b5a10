"""The shape of the shipped code: packages import downwards only, no module import cycle,
paho only where devices are played, aiomqtt only in the benchmark that compares with it, pika
only in ingest's AMQP source."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each shipped package and the packages it may import: the data flows one way, from the
# ground floor (retries, mqtt, devices) through the store to ingest and streams; the shell on top.
ALLOWED = {
    "retries": set(),
    "mqtt": {"retries"},
    "devices": set(),
    "store": {"devices", "retries"},
    "ingest": {"devices", "mqtt", "retries", "store"},
    "streams": {"devices", "mqtt", "retries", "store"},
    "firmware_sim": {"devices", "mqtt", "retries"},
    "grafana": set(),
    "silobreak": {
        "devices",
        "firmware_sim",
        "grafana",
        "ingest",
        "mqtt",
        "retries",
        "store",
        "streams",
    },
}
# Third-party modules only some modules may import: paho plays devices (the simulator, and
# the benchmark's baseline publisher); aiomqtt is the `bench` extra's; pika is the AMQP
# client of ingest's RabbitMQ source, and nothing else speaks AMQP.
CONFINED = {
    "paho": ("firmware_sim.", "silobreak.bench."),
    "aiomqtt": ("silobreak.bench.",),
    "pika": ("ingest.amqp_source",),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every module name `module` imports at run time (not under `if TYPE_CHECKING:`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(nodes: Sequence[ast.AST]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    prefix = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    prefix = node.module or ""
                yield prefix
                yield from (f"{prefix}.{alias.name}" for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from walk([n for n in getattr(node, field, []) if isinstance(n, ast.AST)])

    yield from walk(ast.parse(path.read_text()).body)


def _own(name: str) -> str | None:
    """The shipped module `name` names (a module, or a name inside one), if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_own(name) for name in _imports(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def test_packages_import_only_the_packages_below_them() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if (top := target.partition(".")[0]) != module.partition(".")[0]
        and top not in ALLOWED[module.partition(".")[0]]
    )
    assert wrong == []


def test_no_module_import_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_paho_aiomqtt_and_pika_stay_where_they_belong() -> None:
    wrong = sorted(
        f"{module} imports {name}"
        for module, path in MODULES.items()
        for name in _imports(module, path)
        if (allowed := CONFINED.get(name.partition(".")[0])) is not None
        and not module.startswith(allowed)
    )
    assert wrong == []


def test_the_checks_see_imports() -> None:
    """The walk finds what it must: a known edge, a lazy import, the paho of the simulator."""
    graph = _graph()
    assert "store.deadline" in graph["store.writer"]
    assert "mqtt" in {t.partition(".")[0] for t in graph["streams.mqtt_delivery"]}
    assert any(
        n.startswith("paho") for n in _imports("firmware_sim.link", MODULES["firmware_sim.link"])
    )
