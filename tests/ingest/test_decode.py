"""The decoder applies the payload contract: reasons, their order, values and times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from devices.catalog import DEVICE_TYPES
from devices.registry import KnownDevice, RegistrySnapshot
from ingest.decode import Accepted, Rejected, Window, decode, device_id_of

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
WINDOW = Window.at(NOW, max_age=timedelta(days=7), max_future=timedelta(minutes=5))
TRANSFER = datetime(2026, 11, 25, tzinfo=UTC)
REGISTRY = RegistrySnapshot(
    [
        KnownDevice(
            "air-1",
            DEVICE_TYPES["air_sensor"],
            ((datetime(1970, 1, 1, tzinfo=UTC), "environment"),),
        ),
        KnownDevice(
            "lamp-1", DEVICE_TYPES["streetlight"], ((datetime(1970, 1, 1, tzinfo=UTC), "lighting"),)
        ),
        KnownDevice(
            "tl-1", DEVICE_TYPES["traffic_light"], ((datetime(1970, 1, 1, tzinfo=UTC), "mobility"),)
        ),
        KnownDevice(
            "meter-1",
            DEVICE_TYPES["meter"],
            ((datetime(1970, 1, 1, tzinfo=UTC), "energy"), (TRANSFER, "water")),
            medium="water",
        ),
    ]
)
TS = "2026-11-26T05:59:00.123Z"


def run(device: str, payload: object, *, raw: bytes | None = None) -> Accepted | Rejected:
    body = raw if raw is not None else json.dumps(payload).encode()
    return decode(f"devices/{device}/telemetry", body, REGISTRY, WINDOW, max_payload=65536)


def reason(result: Accepted | Rejected) -> str:
    assert isinstance(result, Rejected), result
    return result.reason


def test_decode_accepts_a_subset_of_metrics_and_tags_the_owner() -> None:
    result = run("air-1", {"ts": TS, "seq": 3, "metrics": {"pm25": 12.5, "no2": 40}})
    assert isinstance(result, Accepted)
    assert result.device_type == "air_sensor"
    (row,) = result.rows
    assert row[0] == datetime(2026, 11, 26, 5, 59, 0, 123000, tzinfo=UTC)
    assert row[1:3] == ("air-1", "environment")
    assert row[3:] == (12.5, None, 40.0, None, None, None)


def test_decode_stores_booleans_as_one_and_zero() -> None:
    on = run("lamp-1", {"ts": TS, "metrics": {"lamp_on": True, "dim_level": 50}})
    off = run("lamp-1", {"ts": TS, "metrics": {"lamp_on": False}})
    assert isinstance(on, Accepted) and isinstance(off, Accepted)
    assert on.rows[0][3] == 1 and off.rows[0][3] == 0


@pytest.mark.parametrize(("phase", "code"), [("green", 2), ("flashing_amber", 3), (4, 4), (1.0, 1)])
def test_decode_takes_enumerations_by_name_or_code(phase: object, code: int) -> None:
    result = run("tl-1", {"ts": TS, "metrics": {"phase": phase}})
    assert isinstance(result, Accepted)
    assert result.rows[0][3] == code


def test_decode_takes_whole_numbers_written_with_a_zero_fraction() -> None:
    result = run("tl-1", {"ts": TS, "metrics": {"vehicle_count": 5.0}})
    assert isinstance(result, Accepted)
    assert result.rows[0][4] == 5
    assert reason(run("tl-1", {"ts": TS, "metrics": {"vehicle_count": 5.5}})) == "schema_violation"


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"pm25": 2000.1},
        {"pm25": -0.1},
        {"temperature_c": -51},
        {"pm25": "12"},
        {"pm25": True},
        {"co2": 400},
        {"pm25": 10, "bogus": 1},
        {"pm25": None},
    ],
)
def test_decode_rejects_bad_metrics_as_schema_violation(metrics: dict[str, object]) -> None:
    assert reason(run("air-1", {"ts": TS, "metrics": metrics})) == "schema_violation"


def test_decode_accepts_range_bounds_inclusive() -> None:
    result = run("air-1", {"ts": TS, "metrics": {"pm25": 0, "pm10": 2000, "temperature_c": -50}})
    assert isinstance(result, Accepted)


def test_decode_rejects_nan_and_infinity_as_schema_violation() -> None:
    assert reason(run("air-1", None, raw=b'{"metrics":{"pm25":NaN}}')) == "schema_violation"
    assert reason(run("air-1", None, raw=b'{"metrics":{"pm25":Infinity}}')) == "schema_violation"
    assert reason(run("air-1", None, raw=b'{"metrics":{"pm25":1e999}}')) == "schema_violation"


def test_decode_rejects_a_timestamp_without_offset_as_schema_violation() -> None:
    result = run("air-1", {"ts": "2026-11-26T05:59:00", "metrics": {"pm25": 1}})
    assert reason(result) == "schema_violation"


def test_decode_takes_epoch_milliseconds() -> None:
    millis = int((NOW - timedelta(seconds=30)).timestamp() * 1000)
    result = run("air-1", {"ts": millis, "metrics": {"pm25": 1}})
    assert isinstance(result, Accepted)
    assert result.rows[0][0] == NOW - timedelta(seconds=30)


def test_decode_uses_receive_time_when_ts_is_missing() -> None:
    result = run("air-1", {"metrics": {"pm25": 1}})
    assert isinstance(result, Accepted)
    assert result.rows[0][0] == NOW


@pytest.mark.parametrize(
    "ts",
    [
        (NOW + timedelta(minutes=5, seconds=1)).isoformat(),
        (NOW - timedelta(days=7, seconds=1)).isoformat(),
        1e30,
        -1e30,
    ],
)
def test_decode_rejects_times_outside_the_window(ts: object) -> None:
    assert reason(run("air-1", {"ts": ts, "metrics": {"pm25": 1}})) == "timestamp_out_of_range"


def test_decode_ignores_unknown_top_level_fields() -> None:
    result = run("air-1", {"ts": TS, "metrics": {"pm25": 1}, "firmware": "1.2.3"})
    assert isinstance(result, Accepted)


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe", b'{"metrics":']
)
def test_decode_rejects_non_objects_as_malformed(raw: bytes) -> None:
    assert reason(run("air-1", None, raw=raw)) == "malformed_payload"


def test_decode_rejects_deeply_nested_json_as_malformed() -> None:
    deep = b"[" * 30_000 + b"]" * 30_000
    assert reason(run("air-1", None, raw=deep)) == "malformed_payload"


def test_decode_checks_reasons_in_contract_order() -> None:
    big = b'{"metrics":{"pm25":1},"pad":"' + b"x" * 70_000 + b'"}'
    assert reason(run("nobody", None, raw=big)) == "payload_too_large"
    assert reason(run("nobody", None, raw=b"garbage")) == "malformed_payload"
    assert reason(run("nobody", {"metrics": {"bogus": 1}})) == "unknown_device"
    too_late = (NOW + timedelta(hours=1)).isoformat()
    assert reason(run("air-1", {"ts": too_late, "metrics": {"bogus": 1}})) == "schema_violation"


def test_decode_rejects_devices_on_other_topics_as_unknown() -> None:
    result = decode(
        "devices/a/b/telemetry", b'{"metrics":{"pm25":1}}', REGISTRY, WINDOW, max_payload=65536
    )
    assert reason(result) == "unknown_device"
    assert device_id_of("devices/air-1/telemetry") == "air-1"
    assert device_id_of("devices//telemetry") is None


def test_decode_tags_the_owner_at_the_readings_own_time() -> None:
    before = run(
        "meter-1", {"ts": (TRANSFER - timedelta(minutes=1)).isoformat(), "metrics": {"index": 10}}
    )
    after = run(
        "meter-1", {"ts": (TRANSFER + timedelta(minutes=1)).isoformat(), "metrics": {"index": 11}}
    )
    assert isinstance(before, Accepted) and isinstance(after, Accepted)
    assert before.rows[0][2] == "energy"
    assert after.rows[0][2] == "water"


def test_decode_reads_senml_with_base_values_into_rows_per_time() -> None:
    bt = (NOW - timedelta(minutes=1)).timestamp()
    pack = [
        {"bn": "air-1:", "bt": bt, "n": "pm25", "u": "ug/m3", "v": 10.5},
        {"n": "no2", "v": 30},
        {"n": "pm25", "t": 10, "v": 11.0},
    ]
    result = run("air-1", pack)
    assert isinstance(result, Accepted)
    rows = sorted(result.rows)
    assert [r[0] for r in rows] == [NOW - timedelta(minutes=1), NOW - timedelta(seconds=50)]
    assert rows[0][3] == 10.5 and rows[0][5] == 30.0
    assert rows[1][3] == 11.0


def test_decode_adds_senml_base_value_and_base_sum_as_rfc_8428_says() -> None:
    bt = (NOW - timedelta(minutes=1)).timestamp()
    # §4.3: the base value is added to each value after it, the base sum to each sum.
    air = run("air-1", [{"bt": bt, "bv": 10, "n": "temperature_c", "v": 2.5},
                        {"n": "humidity_pct", "t": 1, "v": 40}])  # fmt: skip
    assert isinstance(air, Accepted)
    by_time = {r[0]: r for r in air.rows}
    assert by_time[NOW - timedelta(minutes=1)][7] == 12.5
    assert by_time[NOW - timedelta(seconds=59)][8] == 50.0  # carried forward
    meter = run("meter-1", [{"bt": bt, "bs": 1000, "n": "index", "s": 2.5}])
    assert isinstance(meter, Accepted) and meter.rows[0][3] == 1002.5
    lamp = run("lamp-1", [{"bt": bt, "bv": 10, "n": "lamp_on", "vb": True}])
    assert isinstance(lamp, Accepted) and lamp.rows[0][3] == 1  # booleans take no base
    assert reason(run("air-1", [{"bt": bt, "bv": "x", "n": "pm25", "v": 1}])) == (
        "schema_violation"
    )


def test_decode_reads_senml_booleans_and_strings() -> None:
    bt = (NOW - timedelta(minutes=1)).timestamp()
    lamp = run("lamp-1", [{"bt": bt, "n": "lamp_on", "vb": True}])
    light = run("tl-1", [{"bt": bt, "n": "phase", "vs": "red"}])
    assert isinstance(lamp, Accepted) and lamp.rows[0][3] == 1
    assert isinstance(light, Accepted) and light.rows[0][3] == 0


@pytest.mark.parametrize(
    "pack",
    [
        [],
        [{"n": "pm25"}],
        [{"n": "pm25", "v": 1, "vb": True}],
        [{"n": "co2", "v": 1}],
        [{"n": "pm25", "v": 1}, {"n": "pm25", "v": 2}],
        [{"n": 5, "v": 1}],
    ],
)
def test_decode_rejects_bad_senml_as_schema_violation(pack: list[object]) -> None:
    assert reason(run("air-1", pack)) == "schema_violation"


# Each of these once took an ingestor down, or stored what the contract refuses; all found by
# tests/fuzz/ (a publish whose decode raises stops the receive path, and the broker hands the
# same message back to the restarted ingestor: a crash loop on one message).


@pytest.mark.parametrize(
    "raw",
    [
        b'{"metrics": {"pm\xe9": 1}}',  # msgspec raised UnicodeDecodeError, not DecodeError
        b'{"\xed\xa0\x80metrics": {"pm25": 1}}',  # an encoded surrogate msgspec let through
        b'{"metrics": {"pm25": 1}, "note": "\xed\xb0\x80"}',  # ... and would have accepted
    ],
)
def test_decode_rejects_invalid_utf8_as_malformed(raw: bytes) -> None:
    assert reason(run("air-1", None, raw=raw)) == "malformed_payload"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"metrics": {"index": 1' + b"0" * 400 + b"}}",
        b'{"ts": 1' + b"0" * 400 + b', "metrics": {"index": 1}}',
        b'[{"n": "index", "v": 1, "t": 1' + b"0" * 400 + b"}]",
        b'[{"bt": -1' + b"0" * 400 + b', "n": "index", "v": 1}]',
    ],
)
def test_decode_treats_integers_past_a_double_as_not_finite(raw: bytes) -> None:
    assert reason(run("meter-1", None, raw=raw)) == "schema_violation"


def test_decode_rejects_infinity_for_a_metric_with_no_upper_bound() -> None:
    for raw in (b'{"metrics": {"index": Infinity}}', b'{"metrics": {"flow": 1e400}}'):
        assert reason(run("meter-1", None, raw=raw)) == "schema_violation"


def test_decode_rejects_whole_numbers_the_store_cannot_hold() -> None:
    # vehicle_count has no upper bound, but its column is int8: 2**63 once stalled ingest
    # (the writer raised OverflowError on every retry of the batch).
    assert isinstance(run("tl-1", {"metrics": {"vehicle_count": 2**63 - 1}}), Accepted)
    for value in (2**63, 1e19):
        assert reason(run("tl-1", {"metrics": {"vehicle_count": value}})) == "schema_violation"
