"""Coverage-guided fuzzing (atheris, libFuzzer) of the telemetry decoder and the topic parsers.

    python tests/fuzz/fuzz_decode.py -runs=100000 NEW_CORPUS_DIR tests/fuzz/corpus

An input's first byte picks the topic and the rest is the payload; the whole input, read as
UTF-8, is also a topic for the parsers. Any input that raises, or whose outcome breaks the
contract (tests/fuzz/contract.py), is a crash: libFuzzer saves it and exits non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["ingest", "devices"]):
    from tests.fuzz.contract import TOPICS, check_decode, check_topic

# Below libFuzzer's -max_len (4096 in the test): inputs past it take the payload_too_large
# path without each costing 64 KiB.
MAX_PAYLOAD = 2048


def test_one_input(data: bytes) -> None:
    if not data:
        return
    check_decode(TOPICS[data[0] % len(TOPICS)], data[1:], max_payload=MAX_PAYLOAD)
    topic = data.decode("utf-8", "replace")
    check_topic(topic)
    check_decode(topic, b'{"metrics": {"pm25": 1}}', max_payload=MAX_PAYLOAD)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
