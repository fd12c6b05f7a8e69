"""What the JSON API's schemas share: strict request bodies, time filters and list pages."""

import functools
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from ninja import Field, Schema
from pydantic import AfterValidator, BeforeValidator, ConfigDict, create_model, field_validator

from accounts.selectors import MAX_ID
from tradingplatform import numbers

MAX_OFFSET = 10**9


class In(Schema):
    """A request body: a field it does not know is an error naming it (a misspelt ``validity``
    must not place a DAY order)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def readable_number(cls, value):
        return numbers.too_long(value)


# A number sent as a JSON number or as text; text with '_' is refused ("1_400" is no 1400 here).
Number = Annotated[Decimal, BeforeValidator(numbers.no_separators)]


# A time whose offset's '+' was typed into a URL as it is, and so read as a space:
# "2026-12-03T09:15:00 05:30" (from ``...09:15:00+05:30``).
_PLUS_READ_AS_SPACE = re.compile(r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)? \d{2}(:?\d{2})?$")


def offset_plus_kept(value):
    """A time filter's text as sent, or a ValueError saying that its offset's '+' was read as a
    space (a URL's '+' is one): not pydantic's "unexpected extra characters", which does not say why."""
    if isinstance(value, str) and _PLUS_READ_AS_SPACE.search(value.strip()):
        raise ValueError(
            "The offset's '+' was read as a space, as a URL reads it: send it as %2B (+05:30 as %2B05:30)."
        )
    return value


def aware_in_range(value: datetime | None) -> datetime | None:
    """A time filter: with its offset (a bare time would be read in the server's zone), 1970-2999."""
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError("Give the time with its offset, e.g. 2026-12-03T09:15:00+05:30 or ...Z.")
    if not 1970 <= value.year <= 2999:
        raise ValueError("Give a time between the years 1970 and 2999.")
    return value


# A time a list is filtered by: with its offset, in 1970-2999, and its '+' not lost in the URL.
TimeFilter = Annotated[datetime | None, BeforeValidator(offset_plus_kept), AfterValidator(aware_in_range)]


# Services name their own fields; the API's inputs are called these.
FIELD_NAMES = {"instrument": "tradingsymbol", "account": "account_id", "signal_id": "id"}


def api_field(field: str | None) -> str | None:
    """The API's name of a field a service named (``items.0.instrument`` -> ``items.0.tradingsymbol``)."""
    if field is None:
        return None
    *path, last = field.split(".")
    return ".".join([*path, FIELD_NAMES.get(last, last)])


class PageFilters(Schema):
    """How a list is paged: newest first (by id, descending), ``limit`` rows from ``offset``, or after a cursor."""

    limit: int = Field(50, ge=1, le=500, description="Rows per page.")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Rows to skip (after `before_id`, when given).")
    before_id: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description=(
            "Only rows with an id below this one: pass the last id of the page you have to get the next. "
            "Unlike `offset`, rows added, or leaving the filter, while you page neither repeat nor get skipped."
        ),
    )


def page_schema(name: str, items: type[Schema], *, counted: str, order: str = "by id, descending") -> type[Schema]:
    """The schema of a list's page (``page_of``), ``name`` in the OpenAPI document: ``count``
    (``counted`` says of what), ``limit``, ``offset`` and ``items``, newest first (``order`` says how)."""
    return create_model(
        name,
        __base__=Schema,
        __module__=items.__module__,
        count=(int, Field(..., description=counted)),
        limit=(int, ...),
        offset=(int, ...),
        items=(list[items], Field(..., description=f"This page, newest first ({order}).")),
    )


def page_of(rows, filters: PageFilters) -> dict:
    """One page of a query, newest first by id: the count of all its rows (below ``before_id``, when given),
    and ``limit`` of them from ``offset``.

    Ordered by the primary key alone, so ``before_id`` (a keyset cursor) pages exactly: an offset shifts
    when a row is added to the list or leaves it (an order cancelled while "open" ones are paged), a cursor
    does not."""
    rows = rows.order_by("-pk")
    if filters.before_id is not None:
        rows = rows.filter(pk__lt=filters.before_id)
    offset, limit = filters.offset, filters.limit
    count = rows.count()
    # The count and the rows are two reads: a row added (or come into the filter) between them is in the
    # rows only. One row past the page is read so the count says at least that there is more, or a client
    # paging by the count stops at a full page, never seeing the row the new one pushed off it.
    items = list(rows[offset : offset + limit + 1])
    if items:  # (past the end, an offset says nothing of how many there are)
        count = max(count, offset + len(items))
    return {"count": count, "limit": limit, "offset": offset, "items": items[:limit]}


def declared_query_only(view):
    """An operation's view (``api.add_decorator``: run after its key and its input were checked)
    that refuses a query parameter the operation does not declare: a 422 naming it, as a body's
    unknown field is. A misspelt filter (``acount_id``, ``statuses``) must not answer the list
    unfiltered (a script cancelling one account's open orders would cancel every account's), nor
    a body's field sent in the URL be dropped (``POST /baskets/1/place?account_ids=2`` placed the
    basket on every one of its accounts).

    A parameter that takes one value (all but a list's, such as ``status``) given more than once is
    refused too, naming it: the last was used and the others dropped (``?account_id=1&account_id=2``
    listed account 2's orders alone)."""
    operation = view._ninja_operation
    queries = [model for model in operation.models if model.__ninja_param_source__ == "query"]
    known = frozenset(name for model in queries for name in model.__ninja_flatten_map__)
    several = frozenset(name for model in queries for name in getattr(model, "__ninja_collection_fields__", ()))

    @functools.wraps(view)
    def checked(request, *args, **kwargs):
        unknown = next((name for name in request.GET if name not in known), None)
        if unknown is not None:
            if known:
                message = f"Unknown filter; this list takes {', '.join(sorted(known))}."
            elif request.method == "GET":
                message = "Unknown query parameter; this takes none."
            else:
                message = "Unknown query parameter; this takes none (send the fields in the JSON body)."
            raise UnknownFilter(unknown[:64], message)
        repeated = next(
            (name for name in request.GET if name not in several and len(request.GET.getlist(name)) > 1), None
        )
        if repeated is not None:
            raise UnknownFilter(repeated, "Give this parameter once; it takes one value.")
        return view(request, *args, **kwargs)

    return checked


class UnknownFilter(Exception):
    """A query parameter an operation does not take: answered 422 naming it (``tradingplatform.api``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message
