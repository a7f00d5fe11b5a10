"""Grants as ODRL 2.2 contracts: export, JSON-LD expansion with the shipped contexts, import."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from streams import odrl
from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

ODRL: Any = odrl.ODRL
SB: Any = odrl.SB
SPEC_FIELDS = ("owner", "consumer", "device_types", "metrics", "districts", "bbox",
               "granularity", "interval_s", "pool", "min_devices", "purpose",
               "obligations")  # fmt: skip


def test_a_raw_grant_exports_as_an_agreement_that_expands_to_odrl_terms(town: Town) -> None:
    grant = town.grant("mobility", consumer="environment", device_types=["traffic_light"],
                       metrics=["vehicle_count"], districts=["north"])  # fmt: skip
    with town.http("environment") as h:
        r = h.get(f"/v1/grants/{grant['id']}/odrl")
    with town.http("mobility") as h:  # the audit is the owner's to read
        entries = h.get("/v1/audit", params={"action": "grant.export_odrl"}).json()["entries"]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(odrl.MEDIA_TYPE)
    [policy] = odrl.expand(r.json())
    assert policy["@type"] == [ODRL + "Agreement"]
    assert policy["@id"] == f"urn:silobreak:grant:{grant['id']}"
    assert policy[ODRL + "assigner"] == [{"@id": "urn:silobreak:principal:mobility"}]
    assert policy[ODRL + "assignee"] == [{"@id": "urn:silobreak:principal:environment"}]
    [target] = policy[ODRL + "target"]
    assert target[SB + "deviceType"] == [{"@value": "traffic_light"}]
    assert target[SB + "metric"] == [{"@value": "vehicle_count"}]
    [permission] = policy[ODRL + "permission"]
    assert permission[ODRL + "action"] == [{"@id": ODRL + "read"}]
    constraints = _constraints(permission)
    assert set(constraints) == {ODRL + "purpose", ODRL + "dateTime", ODRL + "spatial"}
    assert constraints[ODRL + "dateTime"][ODRL + "operator"] == [{"@id": ODRL + "lt"}]
    [expiry] = constraints[ODRL + "dateTime"][ODRL + "rightOperand"]
    assert expiry["@type"] == "http://www.w3.org/2001/XMLSchema#dateTime"
    assert datetime.fromisoformat(expiry["@value"]) == datetime.fromisoformat(grant["expires_at"])
    [prohibition] = policy[ODRL + "prohibition"]
    assert prohibition[ODRL + "action"] == [{"@id": ODRL + "distribute"}]
    assert ODRL + "obligation" not in policy  # grants carry no duties (docs/contracts.md)
    assert [e["grant_id"] for e in entries] == [grant["id"]]


def test_a_pooled_aggregate_grant_exports_silobreak_action_and_pool_size(town: Town) -> None:
    grant = town.grant("energy", consumer="planning", device_types=["meter"],
                       granularity="aggregate", interval="15m", pool="district",
                       min_devices=6, bbox=[4.0, 50.0, 4.5, 50.5])  # fmt: skip
    with town.http("energy") as h:
        r = h.get(f"/v1/grants/{grant['id']}/odrl")
    assert r.status_code == 200, r.text
    [permission] = odrl.expand(r.json())[0][ODRL + "permission"]
    assert permission[ODRL + "action"] == [{"@id": SB + "readPooled"}]
    constraints = _constraints(permission)
    assert set(constraints) == {ODRL + "purpose", ODRL + "dateTime", SB + "bbox", SB + "interval",
                                SB + "minDevices"}  # fmt: skip
    assert constraints[SB + "minDevices"][ODRL + "operator"] == [{"@id": ODRL + "gteq"}]
    assert constraints[SB + "minDevices"][ODRL + "rightOperand"] == [{"@value": 6}]
    assert constraints[SB + "interval"][ODRL + "rightOperand"] == [
        {"@value": "PT900S", "@type": "http://www.w3.org/2001/XMLSchema#duration"}
    ]


@pytest.mark.parametrize(
    ("grant_kw", "owner", "consumer"),
    [
        ({"device_types": ["traffic_light"], "districts": ["north", "south"]}, "mobility",
         "environment"),
        ({"device_types": ["meter"], "granularity": "aggregate", "interval": "1h",
          "pool": "district", "min_devices": 5, "bbox": [4.0, 49.0, 4.5, 50.5]}, "energy",
         "planning"),
        ({"device_types": ["air_sensor"], "metrics": ["pm25", "no2"],
          "granularity": "aggregate", "interval": "30s", "pool": "device"}, "environment",
         "mobility"),
        ({"device_types": ["streetlight"], "obligations": {
            "delete_after_days": 90, "attribution": "Ville de Lyon, open lighting data"}},
         "lighting", "planning"),
    ],
)  # fmt: skip
def test_an_exported_agreement_imported_as_an_offer_requests_the_same_grant(
    town: Town, grant_kw: dict[str, Any], owner: str, consumer: str
) -> None:
    grant = town.grant(owner, consumer=consumer, **grant_kw)
    with town.http(consumer) as h:
        agreement = h.get(f"/v1/grants/{grant['id']}/odrl").json()
        offer = {**agreement, "@type": "Offer", "uid": "urn:example:offer:1"}
        r = h.post("/v1/grants/odrl", json=offer)
    with town.http(owner) as h:
        entries = h.get("/v1/audit", params={"action": "grant.request"}).json()["entries"]
    assert r.status_code == 201, r.text
    requested = r.json()
    assert (requested["status"], requested["created_by"]) == ("requested", consumer)
    assert {k: requested[k] for k in SPEC_FIELDS} == {k: grant[k] for k in SPEC_FIELDS}
    assert datetime.fromisoformat(requested["expires_at"]) == datetime.fromisoformat(
        grant["expires_at"]
    )
    [entry] = entries
    assert entry["detail"]["via"] == "odrl"
    assert entry["detail"]["policy_uid"] == "urn:example:offer:1"


def _offer(town: Town) -> dict[str, Any]:
    grant = town.grant("mobility", consumer="environment", device_types=["traffic_light"])
    with town.http("environment") as h:
        agreement: dict[str, Any] = h.get(f"/v1/grants/{grant['id']}/odrl").json()
    return {**agreement, "@type": "Request"}


def _permission(policy: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = policy["permission"][0]
    return rule


@pytest.mark.parametrize(
    ("change", "term"),
    [
        (lambda p: _permission(p).update(action="sell"), "action 'sell'"),
        (lambda p: _permission(p)["constraint"].append(
            {"leftOperand": "count", "operator": "lteq", "rightOperand": 10}), "'count'"),
        (lambda p: _permission(p)["constraint"][0].update(operator="neq"), "operator 'neq'"),
        (lambda p: p.update(obligation=[{"action": "delete"}]), "obligation delete"),
        (lambda p: p.update(obligation=[{"action": "compensate", "constraint": []}]),
         "action 'compensate'"),
        (lambda p: p.update(obligation=[{"action": "delete", "constraint": [
            {"leftOperand": "elapsedTime", "operator": "lteq",
             "rightOperand": {"@value": "PT5M", "@type": "xsd:duration"}}]}]),
         "rightOperand of elapsedTime"),
        (lambda p: _permission(p).update(duty=[{"action": "attribute"}]), "duty"),
        (lambda p: _permission(p)["constraint"].pop(0), "purpose"),
        (lambda p: _permission(p)["constraint"].pop(1), "dateTime"),
        (lambda p: p.update(prohibition=[{"action": "print"}]), "prohibition"),
        (lambda p: p["target"].update(fileFormat="csv"), "fileFormat"),
        (lambda p: p.update({"@type": "Set"}), "@type"),
        (lambda p: _permission(p)["constraint"].append(
            {"leftOperand": "minDevices", "operator": "gteq", "rightOperand": 2**40}),
         "rightOperand of minDevices"),
        (lambda p: p["target"].update(deviceType=[]), "deviceType"),
        (lambda p: p.update({"@context": [odrl.ODRL_CONTEXT]}), "@context"),
    ],
)  # fmt: skip
def test_an_offer_with_a_term_outside_the_subset_is_refused_naming_it(
    town: Town, change: Any, term: str
) -> None:
    policy = copy.deepcopy(_offer(town))
    change(policy)
    with town.http("environment") as h:
        r = h.post("/v1/grants/odrl", json=policy)
        requested = h.get("/v1/grants", params={"status": "requested"}).json()
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "odrl_unsupported"
    assert term in r.json()["detail"]
    assert requested == []


def test_only_the_assignee_imports_a_policy(town: Town) -> None:
    policy = _offer(town)
    with town.http("lighting") as h:
        r = h.post("/v1/grants/odrl", json=policy)
    assert (r.status_code, r.json()["reason"]) == (403, "not_assignee")


def test_the_document_loader_serves_shipped_contexts_and_refuses_any_other_url() -> None:
    assert odrl.document_loader(odrl.ODRL_CONTEXT)["document"]["@context"]["odrl"] == ODRL
    assert odrl.document_loader(odrl.SB_CONTEXT)["document"]["@context"]["sb"] == SB
    with pytest.raises(odrl.ContextRefused, match=r"https://example\.org/ctx\.jsonld"):
        odrl.document_loader("https://example.org/ctx.jsonld")
    doc = {"@context": "https://example.org/ctx.jsonld", "@type": "Offer"}
    with pytest.raises(odrl.ContextRefused, match=r"https://example\.org/ctx\.jsonld"):
        odrl.expand(doc)
    nested = {"@context": [odrl.ODRL_CONTEXT, {"x": {"@id": "http://example.net/x", "@context": "http://example.net/c"}}],
              "@type": "Offer", "x": {"y": 1}}  # fmt: skip
    with pytest.raises(odrl.ContextRefused, match=r"http://example\.net/c"):
        odrl.expand(nested)


def test_obligations_export_as_odrl_duties_that_expand_to_odrl_terms(town: Town) -> None:
    grant = town.grant(
        "lighting", consumer="planning", device_types=["streetlight"],
        obligations={"delete_after_days": 30, "attribution": "Ville, lighting"},
    )  # fmt: skip
    with town.http("planning") as h:
        agreement = h.get(f"/v1/grants/{grant['id']}/odrl").json()
    assert agreement["obligation"] == [
        {"action": "delete", "constraint": [{
            "leftOperand": "elapsedTime", "operator": "lteq",
            "rightOperand": {"@value": "P30D", "@type": "xsd:duration"}}]},
        {"action": "attribute", "constraint": [{
            "leftOperand": "attributionText", "operator": "eq",
            "rightOperand": "Ville, lighting"}]},
    ]  # fmt: skip
    [expanded] = odrl.expand(agreement)
    duties = expanded[ODRL + "obligation"]
    assert [d[ODRL + "action"][0]["@id"] for d in duties] == [ODRL + "delete", ODRL + "attribute"]
    left = [d[ODRL + "constraint"][0][ODRL + "leftOperand"][0]["@id"] for d in duties]
    assert left == [ODRL + "elapsedTime", SB + "attributionText"]


def test_a_third_service_cannot_export_a_grant_between_others(town: Town) -> None:
    grant = town.grant("mobility", consumer="environment", device_types=["traffic_light"])
    with town.http("lighting") as h:
        r = h.get(f"/v1/grants/{grant['id']}/odrl")
    with town.http("data-office") as h:
        coordinator = h.get(f"/v1/grants/{grant['id']}/odrl")
        entries = h.get("/v1/audit", params={"action": "grant.export_odrl"}).json()["entries"]
    assert (r.status_code, r.json()["reason"]) == (403, "not_party")
    assert coordinator.status_code == 200
    assert [e["actor"] for e in entries] == ["data-office"]


def _constraints(permission: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c[ODRL + "leftOperand"][0]["@id"]: c for c in permission[ODRL + "constraint"]}


def test_the_documented_agreement_is_what_export_writes_and_import_reads() -> None:
    text = Path(__file__).parents[2].joinpath("docs", "contracts.md").read_text(encoding="utf-8")
    documented = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    spec = odrl.grant_spec({**documented, "@type": "Offer"})
    assert (spec.owner, spec.consumer, spec.granularity, spec.pool) == (
        "energy", "planning", "aggregate", "district",
    )  # fmt: skip
    assert (spec.districts, spec.interval_s, spec.min_devices) == (("north", "south"), 900, 5)
    assert [c["leftOperand"] for c in documented["permission"][0]["constraint"]] == [
        "purpose", "dateTime", "spatial", "interval", "minDevices",
    ]  # fmt: skip
