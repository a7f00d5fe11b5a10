"""Fixtures for fault tests: the e2e broker and ingestors, a seed, an outage length, a database."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from silobreak.local import LocalPostgres
from store.migrate import migrate
from tests.e2e.conftest import broker, start_ingestor  # noqa: F401 - fixtures shared with e2e

# CI's outage: long enough to outlast the store deadline (15 s) that must end a hung call.
# The documented reliability run sets SILOBREAK_FAULT_OUTAGE_S=60 (docs/reliability.md).
_CI_OUTAGE_S = 15.0


@pytest.fixture
def fault_seed() -> int:
    """The seed of a test's random fault moments: SILOBREAK_FAULT_SEED replays a failed run."""
    given = os.environ.get("SILOBREAK_FAULT_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"fault seed {seed} (replay with SILOBREAK_FAULT_SEED={seed})")
    return seed


@pytest.fixture
def outage_s() -> float:
    """How long an outage lasts: SILOBREAK_FAULT_OUTAGE_S, 15 s in CI."""
    return float(os.environ.get("SILOBREAK_FAULT_OUTAGE_S", _CI_OUTAGE_S))


@pytest.fixture
def own_pg(service_dir: Path) -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL of this test's own, for faults that stop or starve the server."""
    with LocalPostgres(service_dir / "pg") as pg:
        migrate(pg.url)
        yield pg
