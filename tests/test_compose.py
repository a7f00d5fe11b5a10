"""docker-compose.yml: valid for Compose, and the deployment the issue asks for.

No Docker engine runs here: Debian's docker-compose validates the file (`config` needs none).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as Compose resolves it (anchors merged, variables defaulted)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not found: run scripts/system-deps (Debian docker-compose)"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


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
