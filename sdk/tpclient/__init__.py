"""Python client for the trading platform's JSON API (``/api/v1/``).

>>> from tpclient import Client
>>> client = Client("https://trade.example.com", "tp_...")
>>> order = client.place_order(1, "INFY", "BUY", 1, order_type="LIMIT", price="1500")
"""

from ._version import __version__
from .client import Client
from .errors import (
    AnswerLost,
    ApiError,
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from .models import (
    Account,
    AccountPage,
    Basket,
    BasketItem,
    BasketPage,
    Instrument,
    InstrumentPage,
    Me,
    Order,
    OrderEvent,
    OrderPage,
    OrderSpec,
    Placement,
    Position,
    PositionPage,
    Scheduled,
    ScheduledPage,
    SignalResult,
    Strategy,
    StrategyPage,
    Trade,
    TradePage,
)

__all__ = [
    "__version__",
    "Client",
    "ApiError",
    "AuthenticationError",
    "Conflict",
    "InvalidRequest",
    "NotFound",
    "AnswerLost",
    "RateLimited",
    "ServerError",
    "TransportError",
    "Account",
    "AccountPage",
    "Basket",
    "BasketPage",
    "BasketItem",
    "Instrument",
    "InstrumentPage",
    "Me",
    "Order",
    "OrderEvent",
    "OrderPage",
    "OrderSpec",
    "Placement",
    "Position",
    "PositionPage",
    "Scheduled",
    "ScheduledPage",
    "SignalResult",
    "Strategy",
    "StrategyPage",
    "Trade",
    "TradePage",
]
