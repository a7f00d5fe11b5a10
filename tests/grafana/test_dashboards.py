"""Every panel of every dashboard against a real store after a simulated day; JSON and provisioning.

Each dashboard's queries run as the database role its datasource logs in as (the service's
governed role, the platform role), with Grafana's variables and macros expanded, at three
intervals so each level of the store is read: 30 s (raw rows), 5 min (1-minute aggregates),
1 h (1-hour aggregates).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from grafana.boards_city import REASONS
from grafana.build import DASHBOARDS, PROVISIONING, boards, check, write
from grafana.macros import Context, expand
from grafana.model import COORDINATOR_UID, PLATFORM_UID, REGION_UID, Board
from ingest.decode import REASONS as DEAD_LETTER_REASONS
from store.sql_roles import PLATFORM_ROLE
from tests.grafana.city_day import Day
from tests.grafana.conftest import COORDINATOR, REGION_TEAM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVALS = ("30s", "5m", "1h")
BOARDS = {b.uid: b for b in boards()}


# The datasources whose login a deployment names (provisioning reads it from the
# environment), and the roles of the principals the test store has in those places.
CONFIGURED = {
    COORDINATOR_UID: ("$SILOBREAK_GRAFANA_COORDINATOR_ROLE", "grafana_" + COORDINATOR),
    REGION_UID: ("$SILOBREAK_GRAFANA_REGION_ROLE", "grafana_" + REGION_TEAM),
}


def role_of(datasource_uid: str, *, provisioned: bool = False) -> str:
    """The role a datasource logs in as: in the test store, or as provisioning writes it."""
    if datasource_uid == PLATFORM_UID:
        return PLATFORM_ROLE
    if datasource_uid in CONFIGURED:
        return CONFIGURED[datasource_uid][0 if provisioned else 1]
    return "grafana_" + datasource_uid.removeprefix("silobreak-")


def as_role(url: str, role: str) -> str:
    """The same store, logged in as `role` over TCP (the test server trusts local logins)."""
    return url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_every_panel_query_returns_rows_with_the_columns_the_panel_expects(
    city_day: tuple[str, Day], uid: str
) -> None:
    url, day = city_day
    board = BOARDS[uid]
    sources = {p.datasource_uid for p in board.checks if p.datasource_uid is not None}
    with contextlib.ExitStack() as stack:
        conns = {
            s: stack.enter_context(psycopg.connect(as_role(url, role_of(s)), autocommit=True))
            for s in {board.datasource_uid, *sources}
        }
        conn = conns[board.datasource_uid]
        values = _variables(conn, board, day)
        ran = 0
        for panel in board.checks:
            conn = conns[panel.datasource_uid or board.datasource_uid]
            scoped = dict(values)
            if panel.repeat is not None:
                # A repeated panel is drawn once per value, each with that value alone.
                scoped[panel.repeat] = list(values[panel.repeat])[:1]
            for query in panel.queries:
                for interval in INTERVALS:
                    sql = expand(query.sql, Context(day.start, day.end, interval, scoped))
                    where = f"{uid} / {panel.title!r} [{query.ref_id}] at {interval}"
                    columns, rows = _run(conn, sql, where)
                    assert columns == query.columns, where
                    assert rows, f"{where}: no rows"
                    _assert_values(query.fmt, columns, rows, where)
                    ran += 1
    assert ran >= len(board.checks) * len(INTERVALS)


def test_the_platform_board_shows_rejects_by_every_reason_a_dead_letter_can_have(
    city_day: tuple[str, Day],
) -> None:
    assert REASONS == DEAD_LETTER_REASONS
    url, day = city_day
    (panel,) = [p for p in BOARDS["silobreak-platform"].checks if p.title == "Rejects by reason"]
    (query,) = panel.queries
    sql = expand(query.sql, Context(day.start, day.end, "1h", {}))
    with psycopg.connect(as_role(url, PLATFORM_ROLE), autocommit=True) as conn:
        _, rows = _run(conn, sql, "Rejects by reason")
    assert {r[1] for r in rows} == set(DEAD_LETTER_REASONS)


def test_committed_dashboards_are_what_the_code_generates() -> None:
    assert check() == []


def test_build_writes_the_json_check_compares_and_a_stale_file_is_reported(
    tmp_path: Path,
) -> None:
    written = write(tmp_path)
    assert {p.relative_to(tmp_path) for p in written} == {
        p.relative_to(DASHBOARDS) for p in DASHBOARDS.glob("*/*.json")
    }
    assert check(tmp_path) == []
    (tmp_path / "lighting" / "silobreak-lighting.json").write_text("{}\n")
    (tmp_path / "lighting" / "old.json").write_text("{}\n")
    problems = check(tmp_path)
    assert any("silobreak-lighting.json: differs" in p for p in problems)
    assert any("old.json: no dashboard produces it" in p for p in problems)


def test_dashboards_reference_only_provisioned_datasources_in_provisioned_folders() -> None:
    provisioned = _yaml_items(PROVISIONING / "datasources", "datasources")
    uids = {d["uid"] for d in provisioned}
    folders = {
        Path(p["options"]["path"]).name
        for p in _yaml_items(PROVISIONING / "dashboards", "providers")
    }
    for path in DASHBOARDS.glob("*/*.json"):
        dash = json.loads(path.read_text())
        assert path.parent.name in folders, f"{path}: no provider loads its folder"
        variables = dash["templating"].get("list", [])
        chooser = [v for v in variables if v["type"] == "datasource"]
        for ref in _datasource_refs(dash):
            uid = ref["uid"]
            if uid == "${datasource}":
                assert chooser, f"{path}: ${{datasource}} without a datasource variable"
                uid = chooser[0]["current"]["value"]
            assert uid in uids, f"{path}: datasource {uid!r} is not provisioned"
            assert ref["type"] == "grafana-postgresql-datasource"
    roles = {d["user"] for d in provisioned if d["type"] == "grafana-postgresql-datasource"}
    used = {b.datasource_uid for b in boards()}
    used |= {p.datasource_uid for b in boards() for p in b.checks if p.datasource_uid}
    assert roles == {role_of(u, provisioned=True) for u in used}


def _variables(conn: psycopg.Connection[Any], board: Board, day: Day) -> dict[str, Any]:
    """Each variable as Grafana would set it by default: every option of a query variable
    ("All"), the first of a custom one."""
    values: dict[str, Any] = {}
    for var in board.variables:
        if var.options:
            values[var.name] = var.options[0]
            continue
        sql = expand(var.query, Context(day.start, day.end, "5m", values))
        _, rows = _run(conn, sql, f"{board.uid} variable {var.name}")
        assert rows, f"{board.uid}: variable {var.name} has no options"
        values[var.name] = [str(r[0]) for r in rows]
    return values


def _run(conn: psycopg.Connection[Any], sql: str, where: str) -> tuple[tuple[str, ...], list[Any]]:
    try:
        cur = conn.execute(sql)
        rows = cur.fetchall()
    except psycopg.Error as exc:
        pytest.fail(f"{where}: {exc}\n{sql}")
    assert cur.description is not None
    return tuple(c.name for c in cur.description), rows


def _assert_values(fmt: str, columns: Sequence[str], rows: list[Any], where: str) -> None:
    if fmt != "time_series":
        return
    # Grafana draws a series from each numeric column but time and metric: each must have
    # numbers, or the panel is empty.
    for i, name in enumerate(columns):
        if name in ("time", "metric"):
            continue
        numbers = [r[i] for r in rows if r[i] is not None]
        assert numbers, f"{where}: column {name!r} is all NULL"
        assert all(isinstance(v, int | float) or hasattr(v, "as_integer_ratio") for v in numbers)
    assert all(r[0] is not None for r in rows), f"{where}: a row without time"


def _yaml_items(folder: Path, key: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        items += yaml.safe_load(path.read_text())[key]
    return items


def _datasource_refs(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict) and "uid" in ref:
            found.append(ref)
        for value in node.values():
            found += _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _datasource_refs(value)
    return found
