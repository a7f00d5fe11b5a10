"""Grants as ODRL 2.2 policies: export an Agreement, import an Offer or Request as a GrantSpec."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any, Final

from pyld import jsonld

from streams.errors import ApiError, StreamsError
from streams.grants import MAX_ATTRIBUTION, MAX_DELETE_AFTER_DAYS, GrantSpec
from streams.scope import AGGREGATE, POOL_DEVICE, POOL_DISTRICT, RAW, Grant

logger = logging.getLogger(__name__)

ODRL: Final = "http://www.w3.org/ns/odrl/2/"
SB: Final = "https://silobreak.org/ns#"
ODRL_CONTEXT: Final = "http://www.w3.org/ns/odrl.jsonld"
SB_CONTEXT: Final = "https://silobreak.org/ns/context.jsonld"
CONTEXT: Final = [ODRL_CONTEXT, SB_CONTEXT]
MEDIA_TYPE: Final = "application/ld+json"
# URL -> file in streams/contexts/ (SOURCE.md there records where each came from).
_SHIPPED: Final = {
    ODRL_CONTEXT: "odrl.jsonld",
    "https://www.w3.org/ns/odrl.jsonld": "odrl.jsonld",
    SB_CONTEXT: "silobreak.jsonld",
}
# action (compact, as in the contexts) -> granularity, pool
_ACTIONS: Final = {
    "read": (RAW, None),
    "readAggregate": (AGGREGATE, POOL_DEVICE),
    "readPooled": (AGGREGATE, POOL_DISTRICT),
}
_TOP_KEYS: Final = frozenset(
    {"@context", "@type", "uid", "assigner", "assignee", "target", "permission", "prohibition",
     "obligation"}
)  # fmt: skip
_TARGET_KEYS: Final = frozenset({"uid", "deviceType", "metric"})
_RULE_KEYS: Final = frozenset({"action", "constraint"})
_CONSTRAINT_KEYS: Final = frozenset({"leftOperand", "operator", "rightOperand"})
# leftOperand -> the operators silobreak accepts for it
_OPERATORS: Final = {
    "purpose": {"eq"},
    "dateTime": {"lt", "lteq"},
    "spatial": {"eq", "isAnyOf"},
    "bbox": {"isPartOf"},
    "interval": {"eq"},
    "minDevices": {"gteq"},
}
_PRINCIPAL: Final = "urn:silobreak:principal:"
_DURATION_RE: Final = re.compile(r"PT(\d{1,7})S")
_DAYS_RE: Final = re.compile(r"P(\d{1,4})D")
# Obligations (ODRL duties on the consumer): action -> (leftOperand, operator) of its one
# constraint, and the grant's obligation it carries.
_DUTIES: Final = {
    "delete": ("elapsedTime", "lteq", "delete_after_days"),
    "attribute": ("attributionText", "eq", "attribution"),
}
# The bounds of the grants API's body (routes_grants.GrantIn), so both doors take the same grants.
_MAX_PURPOSE: Final = 2000
_MAX_TYPES: Final = 200
_MAX_METRICS: Final = 32
_MAX_DISTRICTS: Final = 500
_MAX_MIN_DEVICES: Final = 100_000
UNSUPPORTED: Final = 422


class ContextRefused(StreamsError):
    """A JSON-LD document named a context silobreak does not ship."""


def document_loader(url: str, _options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """pyld's loader: the shipped contexts only, never the network."""
    name = _SHIPPED.get(url)
    if name is None:
        raise ContextRefused(
            f"context {url!r} is not shipped with silobreak (shipped: {', '.join(_SHIPPED)})"
        )
    return {"contextUrl": None, "documentUrl": url, "document": _load(name)}


def expand(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON-LD expansion with the shipped contexts; ContextRefused names any other context."""
    try:
        expanded: list[dict[str, Any]] = jsonld.expand(
            dict(doc), {"documentLoader": document_loader}
        )
    except jsonld.JsonLdError as exc:
        # pyld wraps the loader's error in a generic "dereferencing failed": say what happened.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ContextRefused):
                raise cause from exc
            cause = cause.__cause__
        raise
    return expanded


def agreement(grant: Grant) -> dict[str, Any]:
    """A grant as an ODRL 2.2 Agreement (compact JSON-LD)."""
    if grant.granularity == RAW:
        action = "read"
    else:
        action = "readPooled" if grant.pool == POOL_DISTRICT else "readAggregate"
    target: dict[str, Any] = {
        "uid": f"urn:silobreak:grant:{grant.id}:streams",
        "deviceType": list(grant.device_types),
    }
    if grant.metrics:
        target["metric"] = list(grant.metrics)
    return {
        "@context": CONTEXT,
        "@type": "Agreement",
        "uid": f"urn:silobreak:grant:{grant.id}",
        "assigner": _PRINCIPAL + grant.owner,
        "assignee": _PRINCIPAL + grant.consumer,
        "target": target,
        "permission": [{"action": action, "constraint": _constraints(grant)}],
        # Grants carry no onward-sharing right: a consumer never passes the data on.
        "prohibition": [{"action": "distribute"}],
    } | ({"obligation": _duties(grant.obligations)} if grant.obligations else {})


def grant_spec(doc: Any) -> GrantSpec:
    """An ODRL Offer or Request in silobreak's subset as a GrantSpec; 422 naming the first
    term outside the subset (nothing is dropped silently)."""
    if not isinstance(doc, dict):
        raise _refuse("policy", "the body must be a JSON-LD object")
    _only(doc, _TOP_KEYS, "policy")
    if doc.get("@context") != CONTEXT:
        raise _refuse("@context", f"the @context must be {json.dumps(CONTEXT)}")
    if doc.get("@type") not in ("Offer", "Request"):
        raise _refuse("@type", f"{doc.get('@type')!r}: only Offer or Request are imported")
    try:
        expand(doc)
    except (jsonld.JsonLdError, ContextRefused) as exc:
        raise _refuse("@context", f"not valid JSON-LD: {exc}") from exc
    owner = _party(doc, "assigner")
    consumer = _party(doc, "assignee")
    device_types, metrics = _target(doc.get("target"))
    _prohibitions(doc.get("prohibition"))
    obligations = _read_duties(doc.get("obligation", []))
    rules = doc.get("permission")
    if not isinstance(rules, list) or len(rules) != 1 or not isinstance(rules[0], dict):
        raise _refuse("permission", "exactly one permission is expected")
    rule = rules[0]
    _only(rule, _RULE_KEYS, "permission")
    if rule.get("action") not in _ACTIONS:
        raise _refuse(f"action {rule.get('action')!r}", f"actions supported: {', '.join(_ACTIONS)}")
    granularity, pool = _ACTIONS[rule["action"]]
    terms = _read_constraints(rule.get("constraint"))
    if "purpose" not in terms:
        raise _refuse("purpose", "a purpose constraint (leftOperand purpose, eq) is required")
    if "dateTime" not in terms:
        raise _refuse("dateTime", "an expiry constraint (leftOperand dateTime, lt) is required")
    return GrantSpec(
        owner=owner,
        consumer=consumer,
        device_types=device_types,
        metrics=metrics,
        districts=terms.get("spatial"),
        bbox=terms.get("bbox"),
        granularity=granularity,
        interval_s=terms.get("interval"),
        pool=pool,
        min_devices=terms.get("minDevices"),
        purpose=terms["purpose"],
        expires_at=terms["dateTime"],
        obligations=obligations,
    )


def _constraints(g: Grant) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        _c("purpose", "eq", g.purpose),
        _c("dateTime", "lt", {"@value": g.expires_at.isoformat(), "@type": "xsd:dateTime"}),
    ]
    if g.districts is not None:
        found.append(_c("spatial", "isAnyOf", list(g.districts)))
    if g.bbox is not None:
        found.append(_c("bbox", "isPartOf", ",".join(repr(v) for v in g.bbox)))
    if g.interval_s is not None:
        duration = {"@value": f"PT{g.interval_s}S", "@type": "xsd:duration"}
        found.append(_c("interval", "eq", duration))
    if g.min_devices is not None:
        found.append(_c("minDevices", "gteq", g.min_devices))
    return found


def _duties(obligations: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for action, (left, op, key) in _DUTIES.items():
        if key not in obligations:
            continue
        value = obligations[key]
        if key == "delete_after_days":
            value = {"@value": f"P{value}D", "@type": "xsd:duration"}
        out.append({"action": action, "constraint": [_c(left, op, value)]})
    return out


def _read_duties(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, list):
        raise _refuse("obligation", "obligations are a list of duties")
    found: dict[str, Any] = {}
    for duty in raw:
        if not isinstance(duty, dict):
            raise _refuse("obligation", "each obligation is an object")
        _only(duty, _RULE_KEYS, "obligation")
        action = duty.get("action")
        if not isinstance(action, str) or action not in _DUTIES:
            raise _refuse(f"action {action!r}", f"obligations supported: {', '.join(_DUTIES)}")
        left, op, key = _DUTIES[action]
        constraint = duty.get("constraint")
        if not isinstance(constraint, list) or len(constraint) != 1:
            raise _refuse(f"obligation {action}", f"one constraint: {left} {op} ...")
        item = constraint[0]
        if not isinstance(item, dict):
            raise _refuse(f"obligation {action}", "the constraint is an object")
        _only(item, _CONSTRAINT_KEYS, "constraint")
        if item.get("leftOperand") != left or item.get("operator") != op:
            raise _refuse(f"obligation {action}", f"the constraint is {left} {op} ...")
        if key in found:
            raise _refuse(f"obligation {action}", "given twice")
        found[key] = _duty_operand(action, item.get("rightOperand"))
    return found


def _duty_operand(action: str, right: Any) -> Any:
    if action == "delete":
        value = right.get("@value") if isinstance(right, dict) else None
        match = _DAYS_RE.fullmatch(value) if isinstance(value, str) else None
        if (
            isinstance(right, dict)
            and right.get("@type") == "xsd:duration"
            and match is not None
            and 1 <= int(match[1]) <= MAX_DELETE_AFTER_DAYS
        ):
            return int(match[1])
        raise _refuse(
            "rightOperand of elapsedTime",
            f'{{"@value": "P<days>D", "@type": "xsd:duration"}}, 1 to {MAX_DELETE_AFTER_DAYS} days',
        )
    if isinstance(right, str) and 0 < len(right.strip()) <= MAX_ATTRIBUTION:
        return right.strip()
    raise _refuse("rightOperand of attributionText", f"a text of 1 to {MAX_ATTRIBUTION} chars")


def _c(left: str, op: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": right}


def _read_constraints(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, list):
        raise _refuse("constraint", "the permission's constraints are a list")
    terms: dict[str, Any] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise _refuse("constraint", "each constraint is an object")
        _only(item, _CONSTRAINT_KEYS, "constraint")
        left, op = item.get("leftOperand"), item.get("operator")
        if not isinstance(left, str) or left not in _OPERATORS:
            raise _refuse(
                f"leftOperand {left!r}", f"leftOperands supported: {', '.join(_OPERATORS)}"
            )
        if not isinstance(op, str) or op not in _OPERATORS[left]:
            allowed = ", ".join(sorted(_OPERATORS[left]))
            raise _refuse(f"operator {op!r}", f"{left} takes {allowed}")
        if left in terms:
            raise _refuse(f"leftOperand {left!r}", "given twice")
        terms[left] = _operand(left, item.get("rightOperand"))
    return terms


def _operand(left: str, right: Any) -> Any:
    if left == "purpose" and isinstance(right, str) and 0 < len(right.strip()) <= _MAX_PURPOSE:
        return right.strip()
    if left in ("dateTime", "interval"):
        want = "xsd:dateTime" if left == "dateTime" else "xsd:duration"
        value = right.get("@value") if isinstance(right, dict) else None
        if not isinstance(right, dict) or right.get("@type") != want or not isinstance(value, str):
            raise _refuse(f"rightOperand of {left}", f'{{"@value": ..., "@type": "{want}"}}')
        return _datetime(value) if left == "dateTime" else _seconds(value)
    if left == "spatial":
        names = [right] if isinstance(right, str) else right
        if (
            isinstance(names, list)
            and 0 < len(names) <= _MAX_DISTRICTS
            and all(isinstance(n, str) for n in names)
        ):
            return tuple(names)
    if left == "bbox" and isinstance(right, str):
        try:
            x0, y0, x1, y1 = (float(v) for v in right.split(","))
        except ValueError:
            pass
        else:
            if -180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90:
                return (x0, y0, x1, y1)
    if left == "minDevices" and type(right) is int and 1 <= right <= _MAX_MIN_DEVICES:
        return right
    raise _refuse(f"rightOperand of {left}", f"{json.dumps(right)[:80]} is not a valid value")


def _datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise _refuse("rightOperand of dateTime", f"{text!r} is not an xsd:dateTime with a zone")
    return value


def _seconds(text: str) -> int:
    match = _DURATION_RE.fullmatch(text)
    # The bounds of the grants API (routes_grants): one second to a week.
    if match is None or not 1 <= int(match[1]) <= 7 * 86400:
        raise _refuse("rightOperand of interval", f"{text!r}: PT<seconds>S, 1s to 7 days")
    return int(match[1])


def _party(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.startswith(_PRINCIPAL):
        raise _refuse(key, f"{key} is required, as {_PRINCIPAL}<principal>")
    return value.removeprefix(_PRINCIPAL)


def _target(target: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(target, dict):
        raise _refuse("target", "target is required: an asset with deviceType (and metric)")
    _only(target, _TARGET_KEYS, "target")
    types = _names(target, "deviceType", None, _MAX_TYPES)
    if not types:
        raise _refuse("deviceType", "at least one device type")
    return types, _names(target, "metric", [], _MAX_METRICS)


def _names(
    obj: Mapping[str, Any], key: str, default: list[str] | None, most: int
) -> tuple[str, ...]:
    value = obj.get(key, default)
    if (
        not isinstance(value, list)
        or len(value) > most
        or not all(isinstance(v, str) for v in value)
    ):
        raise _refuse(key, f"{key} is a list of at most {most} names")
    return tuple(value)


def _prohibitions(raw: Any) -> None:
    # The one prohibition silobreak enforces is the one every grant carries; others are refused.
    if raw is None or raw == [{"action": "distribute"}]:
        return
    raise _refuse("prohibition", 'only [{"action": "distribute"}] (every grant carries it)')


def _only(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _refuse(unknown[0], f"{where} term {unknown[0]!r} is outside silobreak's subset")


def _refuse(term: str, detail: str) -> ApiError:
    return ApiError(UNSUPPORTED, "odrl_unsupported", f"{term}: {detail}")


@cache
def _load(name: str) -> dict[str, Any]:
    text = files("streams").joinpath("contexts", name).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc
