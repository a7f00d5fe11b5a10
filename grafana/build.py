"""Generate grafana/dashboards/<folder>/<uid>.json from the dashboards' code, or check it.

The committed JSON is what Grafana's file provisioning loads; this module is its source.
`silobreak grafana build` writes it, `silobreak grafana build --check` fails when it differs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from grafana.boards_city import cross_service, platform
from grafana.boards_env import environment, utilities
from grafana.boards_fleet import lighting, mobility
from grafana.boards_region import region
from grafana.model import Board

logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent
DASHBOARDS: Final = ROOT / "dashboards"
PROVISIONING: Final = ROOT / "provisioning"
# The shipped default city's zone (firmware_sim/scenarios/default.toml); `--timezone` for others.
DEFAULT_TIMEZONE: Final = "Europe/Paris"


def boards(timezone: str = DEFAULT_TIMEZONE) -> list[Board]:
    """Every dashboard, in its folder: one per service, the city's, the platform's, the
    region's."""
    return [
        lighting(timezone),
        mobility(timezone),
        environment(timezone),
        utilities("energy", ("electricity", "gas", "heat"), timezone),
        utilities("water", ("water",), timezone),
        cross_service(timezone),
        platform(timezone),
        region(timezone),
    ]


def path_of(board: Board, out_dir: Path = DASHBOARDS) -> Path:
    return out_dir / board.folder / f"{board.uid}.json"


def write(out_dir: Path = DASHBOARDS, *, timezone: str = DEFAULT_TIMEZONE) -> list[Path]:
    """Write every dashboard; remove JSON files that no dashboard produces any more."""
    written = []
    for board in boards(timezone):
        path = path_of(board, out_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(board.render(), encoding="utf-8")
        written.append(path)
    for stale in set(out_dir.glob("*/*.json")) - set(written):
        stale.unlink()
        logger.info("removed %s", stale)
    return written


def check(out_dir: Path = DASHBOARDS, *, timezone: str = DEFAULT_TIMEZONE) -> list[str]:
    """What differs between the committed JSON and the code (empty: they match)."""
    problems = []
    expected = {}
    for board in boards(timezone):
        path = path_of(board, out_dir)
        expected[path] = board
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != board.render():
            problems.append(f"{path}: differs from its code")
    problems += [f"{p}: no dashboard produces it" for p in sorted(out_dir.glob("*/*.json"))
                 if p not in expected]  # fmt: skip
    return problems
