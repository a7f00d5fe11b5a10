"""The audit of admin actions: who changed which identity or device, when, and how."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]


def record(
    conn: psycopg.Connection[Any],
    actor: str,
    action: str,
    subjects: str | Sequence[str],
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one entry per subject (in the caller's transaction, so it commits with the change)."""
    names = [subjects] if isinstance(subjects, str) else list(subjects)
    if not names:
        return
    conn.execute(
        "INSERT INTO admin_audit (actor, action, subject, detail)"
        " SELECT %s, %s, s, %s::jsonb FROM unnest(%s::text[]) AS s",
        (actor, action, json.dumps(dict(detail or {}), default=str), names),
    )


def entries(
    conn: psycopg.Connection[Any], *, subject: str | None = None, limit: int = 100
) -> list[AuditEntry]:
    """Newest first."""
    rows = conn.execute(
        "SELECT at, actor, action, subject, detail FROM admin_audit"
        " WHERE (%(s)s::text IS NULL OR subject = %(s)s) ORDER BY id DESC LIMIT %(n)s",
        {"s": subject, "n": limit},
    ).fetchall()
    return [AuditEntry(*row) for row in rows]
