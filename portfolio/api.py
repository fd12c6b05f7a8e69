"""The portfolio part of the JSON API: trades (fills) and positions, read only.

Each reads through the portfolio selectors, which scope every row to the caller.
"""

from datetime import datetime
from decimal import Decimal

from ninja import Field, Query, Router, Schema

from accounts.api import account_for
from accounts.selectors import MAX_ID
from tradingplatform.schemas import PageFilters, TimeFilter, page_of, page_schema

from . import selectors

router = Router(tags=["portfolio"])


class TradeOut(Schema):
    id: int
    account_id: int
    order_id: int | None
    broker_trade_id: str
    broker_order_id: str
    exchange: str = Field(..., alias="instrument.exchange")
    tradingsymbol: str = Field(..., alias="instrument.tradingsymbol")
    product: str
    side: str
    quantity: int
    price: Decimal
    filled_at: datetime


TradePage = page_schema(
    "TradePage",
    TradeOut,
    counted="All the fills matching the filters (and below `before_id`).",
    order="by id, descending: as recorded",
)


class TradeFilters(PageFilters):
    account_id: int | None = Field(None, ge=1, le=MAX_ID)
    symbol: str | None = Field(None, max_length=64, description="Trading symbol prefix.")
    since: TimeFilter = Field(None, description="Filled at or after (with an offset).")
    until: TimeFilter = Field(None, description="Filled before (with an offset).")


@router.get("/trades", response=TradePage)
def trade_list(request, filters: Query[TradeFilters]):
    """The caller's fills, newest first (by id: the order they were recorded in). To page through all of them,
    pass the last id of each page as `before_id` for the next."""
    account_for(request, filters.account_id)
    trades = selectors.trades_of(
        request.user, account=filters.account_id, symbol=filters.symbol, since=filters.since, until=filters.until
    )
    return page_of(trades, filters)


class PositionOut(Schema):
    id: int
    account_id: int
    exchange: str = Field(..., alias="instrument.exchange")
    tradingsymbol: str = Field(..., alias="instrument.tradingsymbol")
    product: str
    net_quantity: int
    average_price: Decimal
    last_price: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    updated_at: datetime


PositionPage = page_schema(
    "PositionPage",
    PositionOut,
    counted="All the positions matching the filters (and below `before_id`).",
    order="by id, descending: the order they were first opened in",
)


class PositionFilters(PageFilters):
    account_id: int | None = Field(None, ge=1, le=MAX_ID)
    open_only: bool = Field(False, description="Only positions with a net quantity.")


@router.get("/positions", response=PositionPage)
def position_list(request, filters: Query[PositionFilters]):
    """The caller's positions (FIFO PnL, valued at the last price), newest first (by id: a position keeps
    its row as it changes). To page through all of them, pass the last id of each page as `before_id`."""
    account_for(request, filters.account_id)
    positions = selectors.positions_of(request.user, open_only=filters.open_only)
    if filters.account_id is not None:
        positions = positions.filter(account_id=filters.account_id)
    return page_of(positions, filters)
