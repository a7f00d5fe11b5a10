"""The pieces every dashboard is made of: SQL queries, datasources, variables, a board.

Built on grafana-foundation-sdk (Grafana Labs' typed builders, generated from Grafana's own
schemas); it has no builder for SQL datasource queries, so `SqlQuery` is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

# Grafana's core PostgreSQL plugin (`postgres` before Grafana 10.2).
POSTGRES: Final = "grafana-postgresql-datasource"
# The datasource uids provisioning creates (grafana/provisioning/datasources/silobreak.yaml).
PLATFORM_UID: Final = "silobreak-platform"
# An organisation's coordinator (its data flows) and a regional body (pools across several
# organisations' grants): datasources that log in as the roles a deployment names.
COORDINATOR_UID: Final = "silobreak-coordinator"
REGION_UID: Final = "silobreak-region"
SERVICES: Final = ("lighting", "mobility", "environment", "energy", "water")
DS_VARIABLE: Final = "datasource"

Format = Literal["time_series", "table"]


def service_uid(service: str) -> str:
    return f"silobreak-{service}"


def datasource(uid: str) -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val=POSTGRES, uid=uid)


@dataclass(frozen=True, slots=True)
class Query:
    """One panel query: its SQL (with Grafana macros), format, and the columns it returns."""

    sql: str
    columns: tuple[str, ...]
    fmt: Format = "time_series"
    ref_id: str = "A"


class SqlQuery(variants.Dataquery):
    """A raw-SQL target of the PostgreSQL datasource, as Grafana's query editor saves it."""

    def __init__(self, query: Query) -> None:
        self.query = query

    def to_json(self) -> dict[str, Any]:
        q = self.query
        return {
            "editorMode": "code",
            "format": q.fmt,
            "rawQuery": True,
            "rawSql": q.sql,
            "refId": q.ref_id,
        }


class _Target(cogbuilder.Builder[variants.Dataquery]):
    def __init__(self, query: Query) -> None:
        self._query = SqlQuery(query)

    def build(self) -> variants.Dataquery:
        return self._query


@dataclass(frozen=True, slots=True)
class Variable:
    """A template variable as the panel queries use it (for checks, and to build it)."""

    name: str
    label: str
    query: str = ""  # SQL returning the options (query variables)
    options: tuple[str, ...] = ()  # custom variables
    multi: bool = True


@dataclass(frozen=True, slots=True)
class PanelCheck:
    """What a test runs for one panel: its queries against the store."""

    title: str
    queries: tuple[Query, ...]
    repeat: str | None = None
    # A panel that reads through another datasource than its board's (its uid).
    datasource_uid: str | None = None


@dataclass(slots=True)
class Board:
    """One dashboard: its folder, its SDK builder, and the checks of its panels."""

    folder: str
    uid: str
    title: str
    datasource_uid: str  # what the panels use (or the default of the datasource variable)
    timezone: str
    description: str = ""
    variables: list[Variable] = field(default_factory=list)
    checks: list[PanelCheck] = field(default_factory=list)
    _panels: list[cogbuilder.Builder[dm.Panel]] = field(default_factory=list)
    _ds_variable: bool = False

    @property
    def ref(self) -> dm.DataSourceRef:
        """What panels and variables point at: a fixed datasource, or the chosen one."""
        return datasource(f"${{{DS_VARIABLE}}}" if self._ds_variable else self.datasource_uid)

    def choose_datasource(self) -> None:
        """Let the viewer pick the datasource (its own service's login), defaulting to ours."""
        self._ds_variable = True

    def variable(self, var: Variable) -> Variable:
        self.variables.append(var)
        return var

    def add(
        self, panel: Any, *queries: Query, repeat: str | None = None, source: str | None = None
    ) -> None:
        """Attach the queries (A, B, ...) and the datasource (the board's, or the datasource
        uid `source`) to an SDK panel builder."""
        for q in queries:
            panel.with_target(_Target(q))
        panel.datasource(self.ref if source is None else datasource(source))
        if repeat is not None:
            panel.repeat(repeat).repeat_direction("h").max_per_row(3)
        self._panels.append(panel)
        title = panel.build().title or ""
        self.checks.append(PanelCheck(title, queries, repeat, source))

    def build(self) -> dm.Dashboard:
        dash = (
            db.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["silobreak", self.folder])
            .timezone(self.timezone)
            .time("now-24h", "now")
            .refresh("1m")
            .editable()
        )
        if self._ds_variable:
            dash.with_variable(
                db.DatasourceVariable(DS_VARIABLE)
                .label("Reading as")
                .type(POSTGRES)
                .current(dm.VariableOption(text=self.datasource_uid, value=self.datasource_uid))
            )
        for var in self.variables:
            dash.with_variable(self._variable(var))
        for panel in self._panels:
            dash.with_panel(panel)
        return dash.build()

    def render(self) -> str:
        """The dashboard JSON as committed: sorted keys, two-space indent, final newline."""
        return json.dumps(self.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"

    def _variable(self, var: Variable) -> cogbuilder.Builder[dm.VariableModel]:
        if var.options:
            first = var.options[0]
            return (
                db.CustomVariable(var.name)
                .label(var.label)
                .values(",".join(var.options))
                .multi(var.multi)
                .current(dm.VariableOption(text=first, value=first))
            )
        return (
            db.QueryVariable(var.name)
            .label(var.label)
            .datasource(self.ref)
            .query(var.query)
            .multi(var.multi)
            .include_all(var.multi)
            .current(dm.VariableOption(text="All", value="$__all"))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
