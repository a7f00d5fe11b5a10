"""How catalog names and values are written in the generated SQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from devices.catalog import Aggregation, DeviceType, Kind, MetricSpec

SQL_TYPES: Final = {
    Kind.NUMBER: "double precision",
    Kind.WHOLE: "bigint",
    Kind.BOOL: "smallint",
    Kind.ENUM: "smallint",
}
STATS: Final = ("avg", "min", "max", "count", "sum", "last")
# PostgreSQL's reserved key words (and `index`, quoted in the store since catalog v1): a
# metric of that name is a column written in double quotes.
_RESERVED: Final = frozenset(
    {
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "system_user",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
        "index",
    }
)


def ident(name: str) -> str:
    """A catalog name as a column: quoted only where it must be (or was in v1)."""
    return f'"{name}"' if name in _RESERVED else name


def stat_columns(dtype: DeviceType) -> list[str]:
    """The aggregate columns of a type's metrics: `pm25_avg`, `pm25_min`, ..."""
    return [f"{m.name}_{s}" for m in dtype.metrics for s in STATS]


def energy(m: MetricSpec) -> bool:
    return m.aggregation is Aggregation.ENERGY_MEAN


def interval(span: timedelta) -> str:
    """`INTERVAL '7 days'` for a whole number of days."""
    days = span.days
    return f"INTERVAL '{days} day{'' if days == 1 else 's'}'"


def quoted_list(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)
