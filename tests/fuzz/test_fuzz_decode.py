"""Bad input never breaks the decoder: coverage-guided byte fuzzing and structured JSON shapes."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.catalog import DEVICE_TYPES, PHASE_CODES, Kind
from ingest.decode import (
    MALFORMED_PAYLOAD,
    PAYLOAD_TOO_LARGE,
    SCHEMA_VIOLATION,
    TIMESTAMP_OUT_OF_RANGE,
    Rejected,
)
from tests.fuzz.contract import DEVICES, NOW, TOPICS, WINDOW, check_decode, check_topic

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAX_PAYLOAD = 64 * 1024
# CI's share of the fuzzing; the reliability run sets SILOBREAK_FUZZ_RUNS=10000000.
RUNS = int(os.environ.get("SILOBREAK_FUZZ_RUNS", "100000"))


@pytest.mark.slow
def test_atheris_finds_no_input_the_decoder_or_topic_parsers_mishandle(tmp_path: Path) -> None:
    seed = int(os.environ.get("SILOBREAK_FAULT_SEED") or random.SystemRandom().randrange(2**31))
    print(f"libFuzzer seed {seed} (replay with SILOBREAK_FAULT_SEED={seed})")
    found = tmp_path / "corpus"  # new inputs go here; the seed corpus is read, never written
    found.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_decode.py"),
            f"-runs={RUNS}",
            f"-seed={seed}",
            "-max_len=4096",
            "-timeout=10",
            f"-dict={HERE / 'json.dict'}",
            f"-artifact_prefix={tmp_path}/",
            str(found),
            str(HERE / "corpus"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    crashes = sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-"))
    )
    assert result.returncode == 0, f"{crashes}\n{result.stderr[-4000:]}"
    assert f"Done {RUNS} runs" in result.stderr
    assert not crashes


# -- structured shapes (hypothesis) -----------------------------------------------------

METRIC_NAMES = sorted({m.name for t in DEVICE_TYPES.values() for m in t.metrics})
NUMBER_METRICS = {
    t.name: [m.name for m in t.metrics if m.kind is Kind.NUMBER]
    for t in DEVICE_TYPES.values()
    if any(m.kind is Kind.NUMBER for m in t.metrics)
}
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 2**63, 2**63 - 1, 10**400, -(10**400), 1e308, 5e-324]),
)
values = st.one_of(
    numbers,
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(list(PHASE_CODES)),
    st.lists(st.integers(), max_size=2),
)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
# Naive bounds, as hypothesis wants them; a day inside the calendar's ends, for any offset.
times = st.datetimes(
    min_value=datetime(1, 1, 2, tzinfo=UTC).replace(tzinfo=None),
    max_value=datetime(9999, 12, 30, tzinfo=UTC).replace(tzinfo=None),
)
timestamps = st.one_of(
    st.none(),
    st.builds(lambda d, z: d.replace(tzinfo=z).isoformat(), times, offsets),
    times.map(datetime.isoformat),  # no offset: a schema violation
    numbers,
    st.text(max_size=30),
)
metrics = st.dictionaries(st.sampled_from([*METRIC_NAMES, "co2", ""]), values, max_size=4)
envelopes = st.fixed_dictionaries(
    {"metrics": metrics},
    optional={"ts": timestamps, "seq": numbers, "extra": st.dictionaries(st.text(), values)},
)
senml_records = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.one_of(st.sampled_from(["", "urn:dev:x:", "a/b/"]), st.text(max_size=5)),
        "bt": numbers,
        "n": st.one_of(st.sampled_from(METRIC_NAMES), st.text(max_size=5)),
        "t": numbers,
        "v": numbers,
        "vb": st.booleans(),
        "vs": st.text(max_size=5),
    },
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
documents = st.one_of(envelopes, st.lists(senml_records, max_size=4), json_values)
topics = st.one_of(st.sampled_from(TOPICS), st.text(max_size=40))


def encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()  # NaN and Infinity as JavaScript writes them


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=documents, topic=st.sampled_from(TOPICS))
def test_any_json_shape_is_accepted_or_rejected_by_the_contract(document: Any, topic: str) -> None:
    check_decode(topic, encode(document), max_payload=MAX_PAYLOAD)


@settings(max_examples=300, deadline=None)
@given(
    device_type=st.sampled_from(list(NUMBER_METRICS)),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    others=metrics,
)
def test_nan_and_infinities_in_a_metric_are_a_schema_violation(
    device_type: str, bad: float, others: dict[str, Any]
) -> None:
    names = NUMBER_METRICS[device_type]
    body = encode({"metrics": {**others, names[0]: bad}, "ts": NOW.isoformat()})
    result = check_decode(
        f"devices/{DEVICES[device_type]}/telemetry", body, max_payload=MAX_PAYLOAD
    )
    assert isinstance(result, Rejected)
    assert result.reason == SCHEMA_VIOLATION


@settings(max_examples=300, deadline=None)
@given(
    ts=st.one_of(
        st.datetimes(
            min_value=(WINDOW.latest + timedelta(milliseconds=1)).replace(tzinfo=None)
        ).map(lambda d: d.replace(tzinfo=UTC).isoformat()),
        st.integers(min_value=int(WINDOW.latest.timestamp() * 1000) + 1, max_value=10**300),
        st.floats(min_value=WINDOW.latest.timestamp() * 1000 + 1, allow_infinity=False),
    )
)
def test_times_far_in_the_future_are_out_of_range(ts: object) -> None:
    body = encode({"ts": ts, "metrics": {"pm25": 1.0}})
    topic = f"devices/{DEVICES['air_sensor']}/telemetry"
    result = check_decode(topic, body, max_payload=MAX_PAYLOAD)
    assert isinstance(result, Rejected)
    assert result.reason == TIMESTAMP_OUT_OF_RANGE


@settings(max_examples=300, deadline=None)
@given(
    document=envelopes,
    at=st.integers(min_value=0),
    junk=st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xe2\x82"]),
)
def test_invalid_utf8_anywhere_is_a_malformed_payload(document: Any, at: int, junk: bytes) -> None:
    body = encode(document)
    at %= len(body) + 1
    result = check_decode(TOPICS[2], body[:at] + junk + body[at:], max_payload=MAX_PAYLOAD)
    assert isinstance(result, Rejected)
    assert result.reason == MALFORMED_PAYLOAD


@settings(max_examples=50, deadline=None)
@given(document=documents, extra=st.integers(min_value=1, max_value=1000))
def test_oversized_payloads_are_too_large_whatever_they_hold(document: Any, extra: int) -> None:
    body = encode(document)
    body += b" " * (MAX_PAYLOAD + extra - len(body))
    result = check_decode(TOPICS[0], body, max_payload=MAX_PAYLOAD)
    assert isinstance(result, Rejected)
    assert result.reason == PAYLOAD_TOO_LARGE


def test_deeply_nested_json_is_a_malformed_payload() -> None:
    # Nesting deeper than the parsers recurse, up to just under the 64 KiB limit.
    bodies = [b"[" * d + b"]" * d for d in (1_000, 10_000, 32_000)]
    bodies += [b'{"a":' * d + b"1" + b"}" * d for d in (1_000, 10_000)]
    for body in bodies:
        result = check_decode(TOPICS[2], body, max_payload=MAX_PAYLOAD)
        assert isinstance(result, Rejected)
        assert result.reason == MALFORMED_PAYLOAD, (len(body), result)


@settings(max_examples=1000, deadline=None)
@given(
    topic=st.one_of(
        topics,
        st.builds(
            "/".join,
            st.lists(
                st.sampled_from(["devices", "telemetry", "status", "a", "", "+", "é"]), max_size=5
            ),
        ),
    )
)
def test_topic_parsers_return_none_or_exactly_the_topics_parts(topic: str) -> None:
    check_topic(topic)
