"""What the JSON API's schemas share: strict request bodies and time filters."""

from datetime import datetime

from ninja import Schema
from pydantic import ConfigDict


class In(Schema):
    """A request body: a field it does not know is an error naming it (a misspelt ``validity``
    must not place a DAY order)."""

    model_config = ConfigDict(extra="forbid")


def aware_in_range(value: datetime | None) -> datetime | None:
    """A time filter: with its offset (a bare time would be read in the server's zone), 1970-2999."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError("Give the time with its offset, e.g. 2026-12-03T09:15:00+05:30 or ...Z.")
    if not 1970 <= value.year <= 2999:
        raise ValueError("Give a time between the years 1970 and 2999.")
    return value


# Services name their own fields; the API's inputs are called these.
FIELD_NAMES = {"instrument": "tradingsymbol", "account": "account_id", "signal_id": "id"}


def api_field(field: str | None) -> str | None:
    """The API's name of a field a service named (``items.0.instrument`` -> ``items.0.tradingsymbol``)."""
    if field is None:
        return None
    *path, last = field.split(".")
    return ".".join([*path, FIELD_NAMES.get(last, last)])


def page_of(rows, limit: int, offset: int) -> dict:
    """One page of a query: the count of all its rows, and ``limit`` of them from ``offset``."""
    return {"count": rows.count(), "limit": limit, "offset": offset, "items": list(rows[offset : offset + limit])}
