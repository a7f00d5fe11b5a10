"""SensorThings resource paths and query options, parsed into plain data (pure, no I/O).

What the server does not implement is refused by name (501), what is malformed is a 400:
a client never gets an answer that silently ignored part of its request (OGC 18-088 §9.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from store.query import And, Cmp, Filter, Not, Op, Or
from streams.errors import ApiError

BAD_REQUEST: Final = 400
NOT_FOUND: Final = 404
NOT_IMPLEMENTED: Final = 501
# The most entities one page holds: ~250 kB of Observations JSON; more is paged by nextLink.
MAX_TOP: Final = 1000
DEFAULT_TOP: Final = 100
# The longest $filter accepted: far above any hand-written one, and it bounds the parse.
MAX_FILTER: Final = 2000
# Parentheses and `not`s one filter may nest: far above a hand-written one, and well inside
# Python's recursion limit (each level is three frames of the parser).
MAX_NESTING: Final = 50
# Options of 18-088 this server knows; `$search`, `$format` and `$resultFormat` are known and
# not implemented.
SUPPORTED: Final = frozenset(
    {"$top", "$skip", "$count", "$select", "$orderby", "$filter", "$expand"}
)
UNSUPPORTED: Final = frozenset({"$search", "$format", "$resultFormat", "$skiptoken"})

_SEGMENT: Final = re.compile(r"^([A-Za-z]+)(?:\((.*)\))?$")
_TOKEN: Final = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<time>\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d))"
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_/.]*)"
    r"|(?P<punct>[(),]))"
)
_OPS: Final[Mapping[str, Op]] = {
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
}  # fmt: skip
_ARITHMETIC: Final = frozenset({"add", "sub", "mul", "div", "mod"})


@dataclass(frozen=True, slots=True)
class Segment:
    """One step of a resource path: an entity set or navigation property, maybe with an id."""

    name: str
    id: str | None


@dataclass(frozen=True, slots=True)
class Options:
    top: int
    skip: int
    count: bool
    select: tuple[str, ...] | None
    descending: bool | None  # None: no $orderby
    filter: Filter | None
    expand: tuple[str, ...] = ()


def parse_path(path: str) -> list[Segment]:
    """`Things('a')/Datastreams` as segments; ids are quoted strings (OData literals)."""
    segments = []
    if "\x00" in path:  # PostgreSQL text holds no NUL: no id with one exists
        raise ApiError(NOT_FOUND, "unknown_resource", "no resource with a NUL character")
    for part in path.strip("/").split("/"):
        match = _SEGMENT.match(part)
        if match is None:
            if part in ("$value", "$ref"):
                raise ApiError(NOT_IMPLEMENTED, "not_implemented", f"{part} is not implemented")
            raise ApiError(NOT_FOUND, "unknown_resource", f"no resource {part!r}")
        name, literal = match.group(1), match.group(2)
        segments.append(Segment(name, None if literal is None else _id(literal)))
    return segments


def parse_options(
    query: Mapping[str, str], *, orderable: bool, filterable: bool, fields: frozenset[str]
) -> Options:
    """The query options of one request; `fields`: the properties `$select` may name."""
    for key in query:
        if key in UNSUPPORTED:
            raise ApiError(NOT_IMPLEMENTED, "not_implemented", f"{key} is not implemented")
        if key.startswith("$") and key not in SUPPORTED:
            raise ApiError(BAD_REQUEST, "unknown_query_option", f"no query option {key}")
    for key, allowed in (("$orderby", orderable), ("$filter", filterable)):
        if key in query and not allowed:
            raise ApiError(
                NOT_IMPLEMENTED, "not_implemented", f"{key} is implemented for Observations only"
            )
    return Options(
        top=_int(query, "$top", DEFAULT_TOP, MAX_TOP),
        skip=_int(query, "$skip", 0, 2**62),
        count=_bool(query, "$count"),
        select=_select(query.get("$select"), fields),
        descending=_orderby(query.get("$orderby")),
        filter=None if "$filter" not in query else parse_filter(query["$filter"]),
        expand=_expand(query.get("$expand")),
    )


def parse_filter(text: str) -> Filter:
    """A $filter on `phenomenonTime`, `resultTime` and `result`: comparisons joined by
    `and`, `or`, `not` and parentheses. `result` becomes the metric's column; the others
    the reading time (a reading's result time is the time it was taken)."""
    if len(text) > MAX_FILTER:
        raise ApiError(BAD_REQUEST, "bad_filter", f"$filter is longer than {MAX_FILTER}")
    parser = _Parser(_tokens(text))
    tree = parser.disjunction()
    rest = parser.peek()
    if rest is not None:
        raise ApiError(BAD_REQUEST, "bad_filter", f"$filter: unexpected {rest[1]!r}")
    return tree


def _id(literal: str) -> str:
    if len(literal) >= 2 and literal[0] == literal[-1] == "'":
        return literal[1:-1].replace("''", "'")
    # An integer id names nothing here: every id of this server is a string.
    if literal.isdigit():
        return literal
    raise ApiError(BAD_REQUEST, "bad_id", f"{literal!r} is not an id ('...' or a number)")


def _int(query: Mapping[str, str], key: str, default: int, most: int) -> int:
    text = query.get(key)
    if text is None:
        return default
    if not text.isdigit() or int(text) > most:
        raise ApiError(BAD_REQUEST, "bad_query_option", f"{key} must be 0 to {most}, not {text!r}")
    return int(text)


def _bool(query: Mapping[str, str], key: str) -> bool:
    text = query.get(key, "false")
    if text not in ("true", "false"):
        raise ApiError(BAD_REQUEST, "bad_query_option", f"{key} must be true or false")
    return text == "true"


def _select(text: str | None, fields: frozenset[str]) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise ApiError(
            BAD_REQUEST, "bad_select", f"$select: no property {unknown[0]!r} here"
            f" (one of {', '.join(sorted(fields))})",
        )  # fmt: skip
    return names


def _expand(text: str | None) -> tuple[str, ...]:
    """Navigation properties to expand, one level deep and without options of their own."""
    if text is None:
        return ()
    if any(c in text for c in "(/;$"):
        raise ApiError(
            NOT_IMPLEMENTED, "not_implemented",
            f"$expand {text!r}: nested paths and options in $expand are not implemented",
        )  # fmt: skip
    return tuple(n.strip() for n in text.split(","))


def _orderby(text: str | None) -> bool | None:
    if text is None:
        return None
    parts = text.split()
    if not parts or parts[0] != "phenomenonTime" or len(parts) > 2:
        raise ApiError(
            NOT_IMPLEMENTED, "not_implemented",
            f"$orderby {text!r}: only phenomenonTime asc or desc is implemented",
        )  # fmt: skip
    direction = parts[1] if len(parts) == 2 else "asc"
    if direction not in ("asc", "desc"):
        raise ApiError(BAD_REQUEST, "bad_orderby", f"$orderby: {direction!r} is not asc or desc")
    return direction == "desc"


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    at = 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None:
            raise ApiError(BAD_REQUEST, "bad_filter", f"$filter: cannot read {text[at:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        at = match.end()
    return out


class _Parser:
    """Recursive descent over the tokens: or < and < not < comparison."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.at = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ApiError(BAD_REQUEST, "bad_filter", "$filter ends too early")
        self.at += 1
        return token

    def disjunction(self) -> Filter:
        return self._joined("or", self.conjunction)

    def conjunction(self) -> Filter:
        return self._joined("and", self.negation)

    def _joined(self, word: str, part: Callable[[], Filter]) -> Filter:
        parts = [part()]
        while self.peek() == ("name", word):
            self.take()
            parts.append(part())
        if len(parts) == 1:
            return parts[0]
        return Or(tuple(parts)) if word == "or" else And(tuple(parts))

    def negation(self) -> Filter:
        if self.peek() in (("name", "not"), ("punct", "(")):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ApiError(
                    BAD_REQUEST, "bad_filter", f"$filter nests deeper than {MAX_NESTING}"
                )
        if self.peek() == ("name", "not"):
            self.take()
            return Not(self.negation())
        if self.peek() == ("punct", "("):
            self.take()
            inner = self.disjunction()
            if self.peek() != ("punct", ")"):
                raise ApiError(BAD_REQUEST, "bad_filter", "$filter: a ( is not closed")
            self.take()
            return inner
        return self.comparison()

    def comparison(self) -> Filter:
        kind, name = self.take()
        if kind != "name":
            raise ApiError(BAD_REQUEST, "bad_filter", f"$filter: expected a property, not {name!r}")
        if self.peek() == ("punct", "("):
            raise ApiError(
                NOT_IMPLEMENTED, "not_implemented", f"$filter function {name}() is not implemented"
            )
        if name not in ("phenomenonTime", "resultTime", "result"):
            raise ApiError(
                NOT_IMPLEMENTED, "not_implemented",
                f"$filter on {name!r}: only phenomenonTime, resultTime and result are implemented",
            )  # fmt: skip
        _, op = self.take()
        if op in _ARITHMETIC:
            raise ApiError(
                NOT_IMPLEMENTED, "not_implemented", f"$filter operator {op} is not implemented"
            )
        if op not in _OPS:
            raise ApiError(BAD_REQUEST, "bad_filter", f"$filter: {op!r} is not a comparison")
        kind, literal = self.take()
        if name == "result":
            return Cmp("result", _OPS[op], _number(kind, literal))
        return Cmp("time", _OPS[op], _time(kind, literal))


def _number(kind: str, literal: str) -> float:
    if kind == "num":
        return float(literal)
    if kind == "name" and literal in ("true", "false"):
        return 1.0 if literal == "true" else 0.0
    raise ApiError(
        BAD_REQUEST, "bad_filter", f"$filter: result compares to a number, not {literal}"
    )


def _time(kind: str, literal: str) -> datetime:
    if kind == "time":
        try:
            return datetime.fromisoformat(literal)
        except ValueError:
            pass
    raise ApiError(
        BAD_REQUEST, "bad_filter", f"$filter: {literal} is not a time like 2026-01-01T00:00:00Z"
    )
