"""docker-compose.yml: valid for Compose, and the deployment the issue asks for.

No Docker engine runs here: Debian's docker-compose validates the file (`config` needs none).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def _resolved(*args: str, **env: str) -> dict[str, Any]:
    """`docker-compose [args] config`, with `env` added to the environment."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not found: run scripts/system-deps (Debian docker-compose)"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), *args, "config"],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
        env={**os.environ, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as Compose resolves it (anchors merged, variables defaulted)."""
    return _resolved()


def test_compose_file_validates(resolved: dict[str, Any]) -> None:
    assert resolved["services"]


def test_the_deployment_has_every_part_with_the_images_asked_for(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    images = {name: s.get("image") for name, s in services.items()}
    assert images["mosquitto"] == "eclipse-mosquitto:2"
    # A release the TimescaleDB path was checked against, not a moving `latest`.
    assert images["timescaledb"] == "timescale/timescaledb:2.28.3-pg15"
    assert images["influxdb"] == "influxdb:2"
    assert images["grafana"] == "grafana/grafana"
    for app in ("setup", "ingest-1", "ingest-2", "streams", "simulator", "broker-sync"):
        assert services[app]["build"]["context"] == str(ROOT), app
    assert (ROOT / "Dockerfile").is_file()


def test_two_ingestors_share_the_subscription_each_with_its_own_client_id(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    ids = [
        services[n]["environment"]["SILOBREAK_INGEST_CLIENT_ID"] for n in ("ingest-1", "ingest-2")
    ]
    assert len(set(ids)) == 2
    for name in ("ingest-1", "ingest-2"):
        assert "silobreak up" in " ".join(services[name]["command"])
        assert "SILOBREAK_INGEST_SHARE_GROUP" not in services[name]["environment"]  # one group


def test_ingest_and_streams_are_health_checked_on_healthz(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in ("ingest-1", "ingest-2", "streams"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "/healthz" in check, name


def test_grafana_gets_the_provisioning_dashboards_and_role_passwords(
    resolved: dict[str, Any],
) -> None:
    grafana = resolved["services"]["grafana"]
    targets = mounts(grafana)
    assert Path(targets["/etc/grafana/provisioning"]) == ROOT / "grafana/provisioning"
    assert Path(targets["/var/lib/grafana/dashboards"]) == ROOT / "grafana/dashboards"
    assert grafana["environment"]["SILOBREAK_GRAFANA_DASHBOARDS"] == "/var/lib/grafana/dashboards"
    provisioning = (ROOT / "grafana/provisioning/datasources/silobreak.yaml").read_text()
    assert "/etc/grafana/silobreak/" in provisioning
    assert targets["/etc/grafana/silobreak"] == "grafana-secrets"


def test_state_lives_in_named_volumes(resolved: dict[str, Any]) -> None:
    declared = set(resolved["volumes"])
    for name, service in resolved["services"].items():
        for source in mounts(service).values():
            assert source.startswith("/") or source in declared, f"{name}: {source}"
    for stateful in ("timescaledb", "influxdb", "grafana"):
        sources = mounts(resolved["services"][stateful]).values()
        assert any(s in declared for s in sources), stateful


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (`source:target[:mode]`, as config prints)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = source
    return found


def test_the_ha_profile_runs_three_etcd_and_three_patroni_members_of_the_written_config() -> None:
    resolved = _resolved("--profile", "ha", SILOBREAK_DB_HOSTS="pg-1:5432,pg-2:5432,pg-3:5432")
    services = resolved["services"]
    ha = sorted(name for name, s in services.items() if "ha" in s.get("profiles", []))
    assert ha == ["etcd-1", "etcd-2", "etcd-3", "ha-setup", "pg-1", "pg-2", "pg-3"]
    # Outside the profile nothing changes: the platform's services run in every profile.
    assert all(not services[n].get("profiles") for n in ("setup", "ingest-1", "streams"))
    setup = services["ha-setup"]
    args = setup["command"]
    assert args[0] == "ha-config"
    assert "--bind=0.0.0.0" in args  # the health check asks 127.0.0.1 inside the container
    assert [a for a in args if a.startswith("--host=")] == [f"--host=pg-{i}" for i in (1, 2, 3)]
    assert [a for a in args if a.startswith("--etcd=")] == [
        f"--etcd=etcd-{i}:2379" for i in (1, 2, 3)
    ]
    for i in range(3):
        member = services[f"pg-{i + 1}"]
        assert member["command"] == [f"/etc/patroni/pg{i}.yml"]  # ha-config's file names
        assert Path(member["build"]["context"]) == ROOT / "deploy/patroni"
        assert member["depends_on"]["ha-setup"]["condition"] == "service_completed_successfully"
        assert "/health" in " ".join(member["healthcheck"]["test"])
    url = services["ingest-1"]["environment"]["SILOBREAK_DATABASE_URL"]
    assert "@pg-1:5432,pg-2:5432,pg-3:5432/silobreak" in url
    peers = [a for a in services["etcd-2"]["command"] if a.startswith("--initial-cluster=")]
    assert peers == [
        "--initial-cluster=" + ",".join(f"etcd-{i}=http://etcd-{i}:2380" for i in (1, 2, 3))
    ]
    assert (ROOT / "deploy/patroni/Dockerfile").is_file()


def test_the_cluster_profile_runs_three_rabbitmq_nodes_on_the_written_config(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    nodes = ("rmq1", "rmq2", "rmq3")
    config = services["rabbitmq-config"]["command"]
    assert config[:3] == ["broker-config", "--engine", "rabbitmq"]
    assert [config[i + 1] for i, a in enumerate(config) if a == "--cluster-node"] == [
        f"rabbit@{n}" for n in nodes
    ]
    cookies = set()
    for name in nodes:
        node = services[name]
        assert node["profiles"] == ["cluster"]
        assert node["hostname"] == name
        assert node["image"] == "rabbitmq:3.10"
        assert mounts(node)["/etc/rabbitmq"] == "rabbitmq-config"
        assert mounts(node)["/var/lib/rabbitmq"] == f"{name}-data"  # each its own data
        cookies.add(node["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"])
    assert len(cookies) == 1  # one Erlang cookie: the nodes accept each other
    firsts = set()
    for name in ("ingest-cluster-1", "ingest-cluster-2"):
        urls = services[name]["environment"]["SILOBREAK_INGEST_AMQP_URL"].split(",")
        assert sorted(u.split("@")[1].split(":")[0] for u in urls) == list(nodes), name
        firsts.add(urls[0])
    assert len(firsts) == 2  # the two ingestors start on different nodes
