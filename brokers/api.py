"""The instruments part of the JSON API."""

from datetime import date
from decimal import Decimal

from ninja import Field, Query, Router, Schema

from . import selectors

router = Router(tags=["instruments"])


class InstrumentOut(Schema):
    id: int
    exchange: str
    tradingsymbol: str
    name: str
    instrument_type: str
    segment: str
    expiry: date | None
    lot_size: int
    tick_size: Decimal
    last_price: Decimal
    previous_close: Decimal


class InstrumentPage(Schema):
    truncated: bool
    items: list[InstrumentOut]


class InstrumentQuery(Schema):
    q: str = Field("", max_length=64, description="Symbol prefix or part of the name.")
    limit: int = Field(50, ge=1, le=500)


@router.get("/instruments", response=InstrumentPage)
def instrument_search(request, query: Query[InstrumentQuery]):
    rows, truncated = selectors.instruments_search(query.q, limit=query.limit)
    return {"truncated": truncated, "items": rows}
