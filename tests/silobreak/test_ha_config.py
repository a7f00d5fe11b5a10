"""`silobreak ha-config`: Patroni's files for a synchronous cluster, and the URL to give.

That Patroni runs a cluster from these files, fails over and switches over, is
tests/faults/test_ha_failover.py (silobreak.local_ha configures its clusters with the same code).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from silobreak.ha_config import HaConfig, Member, members, render
from silobreak.settings import SettingsError

_ENTRY = "from silobreak.cli import main; main(prog_name='silobreak')"


def _config(**changes: object) -> HaConfig:
    base: dict[str, object] = {
        "scope": "city",
        "members": members(3, ["db1", "db2", "db3"], 5432, 8008, Path("/data")),
        "etcd_hosts": ("e1:2379", "e2:2379", "e3:2379"),
        "bin_dir": Path("/usr/lib/postgresql/15/bin"),
    }
    return HaConfig(**{**base, **changes})  # type: ignore[arg-type]


def test_ha_config_writes_a_file_per_member_and_prints_the_url(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    args = ["ha-config", "--dir", str(tmp_path / "ha"), "--etcd", "e1:2379", "--etcd", "e2:2379"]
    args += ["--host", "db1", "--host", "db2", "--host", "db3"]
    result = subprocess.run(
        [sys.executable, "-c", _ENTRY, *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    url = "postgresql://postgres@db1:5432,db2:5432,db3:5432/silobreak"
    assert f"SILOBREAK_DATABASE_URL={url}?target_session_attrs=read-write" in result.stdout
    files = sorted((tmp_path / "ha").iterdir())
    assert [f.name for f in files] == ["pg0.yml", "pg1.yml", "pg2.yml"]
    read = [yaml.safe_load(f.read_text()) for f in files]
    assert [r["postgresql"]["listen"] for r in read] == ["db1:5432", "db2:5432", "db3:5432"]
    dcs = read[0]["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["synchronous_mode_strict"] is True
    assert read[0]["etcd3"]["hosts"] == ["e1:2379", "e2:2379"]
    # One cluster: the same generated passwords in every member's file.
    passwords = {r["postgresql"]["authentication"]["replication"]["password"] for r in read}
    assert len(passwords) == 1
    assert len(passwords.pop()) >= 24
    assert all(not stat.S_IMODE(f.stat().st_mode) & stat.S_IROTH for f in files)


def test_render_is_yaml_that_reads_back_as_the_configuration() -> None:
    config = _config(parameters={"max_connections": 300, "synchronous_commit": "on"})
    for member in config.members:
        wanted = config.member_config(member)
        assert yaml.safe_load(render(wanted)) == wanted


def test_members_on_one_host_take_the_next_ports() -> None:
    found = members(3, [], 5432, 8008, Path("/d"))
    assert [(m.host, m.pg_port, m.api_port) for m in found] == [
        ("127.0.0.1", 5432, 8008),
        ("127.0.0.1", 5433, 8009),
        ("127.0.0.1", 5434, 8010),
    ]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"ttl": 20}, r"loop_wait \+ 2 x retry_timeout"),
        ({"etcd_hosts": ()}, "etcd"),
        ({"members": members(1, [], 5432, 8008, Path("/d"))}, "at least 2 members"),
        (
            {"members": (Member("a", "h", 5432, 8008, Path("/a")),) * 2},
            "member names repeat",
        ),
        (
            {
                "members": (
                    Member("a", "h", 5432, 8008, Path("/a")),
                    Member("b", "h", 5432, 8009, Path("/b")),
                )
            },
            "share a host and port",
        ),
    ],
)
def test_a_cluster_patroni_would_refuse_is_refused_first(
    changes: dict[str, object], why: str
) -> None:
    with pytest.raises(SettingsError, match=why):
        _config(**changes).check()


def test_members_listen_on_their_host_unless_told_to_bind_elsewhere() -> None:
    config = _config()
    assert config.member_config(config.members[1])["postgresql"]["listen"] == "db2:5432"
    bound = _config(bind="0.0.0.0")
    written = bound.member_config(bound.members[1])
    assert written["postgresql"]["listen"] == "0.0.0.0:5432"
    assert written["restapi"]["listen"] == "0.0.0.0:8008"
    # Others reach it by its name all the same.
    assert written["postgresql"]["connect_address"] == "db2:5432"
    assert written["restapi"]["connect_address"] == "db2:8008"


def test_trust_is_for_the_loopback_only_and_has_no_passwords() -> None:
    config = _config(auth="trust")
    written = config.member_config(config.members[0])
    assert "password" not in written["postgresql"]["authentication"]["superuser"]
    assert all(
        "127.0.0.1/32 trust" in line
        for line in written["postgresql"]["pg_hba"]
        if line.startswith("host")
    )
