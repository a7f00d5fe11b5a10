"""SensorThings paths and query options as parsed (pure): a `$filter` written out from a
filter tree reads back as that tree, and whatever a client sends is a tree or one 4xx/501."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.query import And, Cmp, Filter, Not, Or
from streams.errors import ApiError
from streams.sta.options import parse_filter, parse_options, parse_path

_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _times() -> st.SearchStrategy[Cmp]:
    return st.builds(
        Cmp,
        st.just("time"),
        st.sampled_from(_OPS),
        st.integers(0, 10**9).map(lambda s: _T0 + timedelta(seconds=s)),
    )


def _results() -> st.SearchStrategy[Cmp]:
    return st.builds(
        Cmp, st.just("result"), st.sampled_from(_OPS), st.integers(-(10**6), 10**6).map(float)
    )


def _trees() -> st.SearchStrategy[Filter]:
    leaves = st.one_of(_times(), _results())
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
            inner.map(Not),
        ),
        max_leaves=8,
    )


def _text(f: Filter) -> str:
    if isinstance(f, Cmp):
        name = "phenomenonTime" if f.field == "time" else "result"
        value = f.value.isoformat().replace("+00:00", "Z") if f.field == "time" else f.value
        return f"{name} {f.op} {value}"
    if isinstance(f, Not):
        return f"not ({_text(f.part)})"
    word = " and " if isinstance(f, And) else " or "
    return word.join(f"({_text(x)})" for x in f.parts)


@given(_trees())
def test_a_filter_written_out_reads_back_as_the_same_tree(tree: Filter) -> None:
    assert parse_filter(_text(tree)) == tree


@given(st.text(max_size=60))
def test_any_filter_text_is_a_tree_or_one_clear_refusal(text: str) -> None:
    refused = _refusal(lambda: parse_filter(text))
    assert refused is None or (refused.status in (400, 501) and refused.detail)


@given(st.text(max_size=40))
def test_any_path_is_segments_or_one_clear_refusal(path: str) -> None:
    refused = _refusal(lambda: parse_path(path))
    assert refused is None or refused.status in (400, 404, 501)
    if refused is None:
        assert all(s.name.isalpha() for s in parse_path(path))


def _refusal(call: Callable[[], object]) -> ApiError | None:
    try:
        call()
    except ApiError as exc:
        return exc
    return None


def test_a_filter_nested_past_the_limit_is_refused_not_a_crash() -> None:
    with pytest.raises(ApiError) as refused:
        parse_filter("(" * 600 + "result eq 1" + ")" * 600)
    assert (refused.value.status, refused.value.reason) == (400, "bad_filter")
    assert parse_filter("not " * 20 + "result eq 1") is not None


def test_precedence_is_not_then_and_then_or() -> None:
    a, b, c = (Cmp("result", "eq", float(n)) for n in (1, 2, 3))
    assert parse_filter("result eq 1 or result eq 2 and not result eq 3") == Or(
        (a, And((b, Not(c))))
    )


@pytest.mark.parametrize(
    ("query", "status", "named"),
    [
        ({"$top": "1001"}, 400, "$top"),
        ({"$skip": "x"}, 400, "$skip"),
        ({"$count": "yes"}, 400, "$count"),
        ({"$search": "lamp"}, 501, "$search"),
        ({"$expand": "Datastreams/Observations"}, 501, "$expand"),
        ({"$orderby": "phenomenonTime sideways"}, 400, "sideways"),
    ],
)
def test_options_are_refused_by_name(query: dict[str, str], status: int, named: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_options(query, orderable=True, filterable=True, fields=frozenset({"name"}))
    assert refused.value.status == status
    assert named in refused.value.detail
