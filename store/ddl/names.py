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
# PostgreSQL's key words that cannot stand as a bare column name (`pg_get_keywords()` with
# catcode <> 'U' on PostgreSQL 15, and those PostgreSQL 16-17 added), and `index`, quoted in
# the store since catalog v1: a metric of that name is a column written in double quotes.
_RESERVED: Final = frozenset(
    (
        "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric",
        "authorization", "between", "bigint", "binary", "bit", "boolean", "both", "case", "cast",
        "char", "character", "check", "coalesce", "collate", "collation", "column", "concurrently",
        "constraint", "create", "cross", "current_catalog", "current_date", "current_role",
        "current_schema", "current_time", "current_timestamp", "current_user", "dec", "decimal",
        "default", "deferrable", "desc", "distinct", "do", "else", "end", "except", "exists",
        "extract", "false", "fetch", "float", "for", "foreign", "freeze", "from", "full", "grant",
        "greatest", "group", "grouping", "having", "ilike", "in", "initially", "inner", "inout",
        "int", "integer", "intersect", "interval", "into", "is", "isnull", "join", "lateral",
        "leading", "least", "left", "like", "limit", "localtime", "localtimestamp", "national",
        "natural", "nchar", "none", "normalize", "not", "notnull", "null", "nullif", "numeric",
        "offset", "on", "only", "or", "order", "out", "outer", "overlaps", "overlay", "placing",
        "position", "precision", "primary", "real", "references", "returning", "right", "row",
        "select", "session_user", "setof", "similar", "smallint", "some", "substring", "symmetric",
        "table", "tablesample", "then", "time", "timestamp", "to", "trailing", "treat", "trim",
        "true", "union", "unique", "user", "using", "values", "varchar", "variadic", "verbose",
        "when", "where", "window", "with", "xmlattributes", "xmlconcat", "xmlelement", "xmlexists",
        "xmlforest", "xmlnamespaces", "xmlparse", "xmlpi", "xmlroot", "xmlserialize", "xmltable",
        "json", "json_array", "json_arrayagg", "json_exists", "json_object", "json_objectagg",
        "json_query", "json_scalar", "json_serialize", "json_table", "json_value", "merge_action",
        "system_user", "index",
    )
)  # fmt: skip


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
