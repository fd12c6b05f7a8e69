"""The broker contract: what every adapter does, in broker-neutral types.

An adapter (``brokers/paper``, ``brokers/kite``) subclasses ``Broker`` and implements
each method as its docstring says. Adapters are thin translators: they do not retry,
rate-limit or refresh sessions; ``brokers.client.AccountBroker`` does that around them,
the same way for every broker. Prices are ``Decimal``; times are timezone-aware.
Adapters raise only the errors in ``brokers.errors``.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from brokers import markets
from brokers.markets import IST, trading_date

BUY, SELL = "BUY", "SELL"
ORDER_TYPES = ("MARKET", "LIMIT", "SL", "SL-M")
PRODUCTS = ("CNC", "MIS", "NRML")
VALIDITIES = ("DAY", "IOC")


def ist_today(now: datetime | None = None) -> date:
    """The trading day in India now (or at ``now``): contracts expire and sessions end by it."""
    return trading_date(now)


def instrument_expired(instrument, today: date | None = None) -> bool:
    """Whether a contract has expired: its expiry is before today (IST). One expiring today still trades.

    ``instrument`` is anything with an ``expiry`` date or None (equities never expire).
    """
    expiry = getattr(instrument, "expiry", None)
    return expiry is not None and expiry < (today or ist_today())


# Zerodha blocks stop-loss market (SL-M) orders on F&O option contracts (an illiquid strike's
# market order can fill far from its trigger): a stop on an option is an SL, with a limit price.
OPTION_EXCHANGES = frozenset({"NFO", "BFO"})
OPTION_TYPES = frozenset({"CE", "PE"})
STOP_MARKET_BLOCKED = "SL-M orders are blocked for F&O option contracts; use an SL (stop-loss limit) order instead."


def stop_market_allowed(instrument) -> bool:
    """Whether an SL-M order may be placed on ``instrument`` (anything with an ``exchange`` and an
    ``instrument_type``: the platform's instrument or the paper exchange's): not on an option of
    NFO or BFO, as Kite refuses it there."""
    return not (instrument.exchange in OPTION_EXCHANGES and instrument.instrument_type in OPTION_TYPES)


# Exchanges whose quantities are lots of a contract multiplier (Kite's MCX, CDS and BCD: 1 lot
# of LEADMINI is 1000 kg). The platform's PnL is price x quantity, so it neither trades them nor
# records their fills until it keeps each contract's multiplier.
MULTIPLIED_EXCHANGES = frozenset({"MCX", "CDS", "BCD"})


def next_morning_expiry(now: datetime) -> datetime:
    """When an Indian broker session ends: 06:00 IST the next morning (Kite's rule)."""
    local = now.astimezone(IST)
    six = local.replace(hour=6, minute=0, second=0, microsecond=0)
    return six if local < six else six + timedelta(days=1)


class Status:
    """Broker-neutral order states (the platform's own, minus NEW and FAILED)."""

    SUBMITTED = "SUBMITTED"  # the broker has it but has not opened it yet
    OPEN = "OPEN"  # resting, or a stop waiting for its trigger
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"

    FINAL = (FILLED, CANCELLED, REJECTED)


@dataclass(frozen=True)
class SessionTokens:
    access_token: str
    expires_at: datetime
    refresh_token: str | None = None
    user_id: str = ""

    def __repr__(self):  # tokens never reach a log line
        return f"SessionTokens(user_id={self.user_id!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class OrderRequest:
    exchange: str
    tradingsymbol: str
    side: str
    quantity: int
    order_type: str
    product: str
    tag: str
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    validity: str = "DAY"
    variety: str = "regular"


@dataclass(frozen=True)
class OrderChange:
    quantity: int | None = None
    price: Decimal | None = None
    trigger_price: Decimal | None = None
    order_type: str | None = None


@dataclass(frozen=True)
class PlacedOrder:
    broker_order_id: str
    # The order's state in the broker's answer, when the answer carries it (the paper exchange's
    # does: the order may be filled on arrival already).
    state: "BrokerOrder | None" = None
    # The broker's own word on this change (the paper exchange's announcement of it), held back for
    # the placer because the answer says the same: whoever takes the answer calls it if the answer
    # is not recorded after all (it then tells the platform as any change is told). With it, the
    # fills of that state (an order filled on arrival), which the placer records with the answer.
    untold: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    fills: tuple["BrokerTrade", ...] = ()
    # The answer was lost and the order found in the broker's book by its tag (``state``: as found).
    found_by_tag: bool = False


@dataclass(frozen=True)
class BrokerOrder:
    broker_order_id: str
    tag: str | None
    exchange: str
    tradingsymbol: str
    side: str
    order_type: str
    product: str
    validity: str
    quantity: int
    price: Decimal
    trigger_price: Decimal
    status: str
    filled_quantity: int
    pending_quantity: int
    cancelled_quantity: int
    average_price: Decimal
    status_message: str | None
    placed_at: datetime | None
    updated_at: datetime | None
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    # False while the broker is still validating the order or a change of it: its quantity, type
    # and prices may then be the old ones (Kite's book shows them until a modify is through).
    terms_settled: bool = True
    # A stop order's trigger: False while it waits for it (Kite's TRIGGER PENDING), True once the
    # market crossed it and the order is the plain one it became (its trigger can no longer be
    # changed). None when the broker does not say, or the order is no stop.
    triggered: bool | None = None


@dataclass(frozen=True)
class BrokerTrade:
    trade_id: str
    broker_order_id: str
    exchange: str
    tradingsymbol: str
    side: str
    product: str
    quantity: int
    price: Decimal
    filled_at: datetime | None
    # The order's tag, where the broker gives it with the fill (the paper exchange does; Kite's
    # trades do not).
    order_tag: str | None = None


@dataclass(frozen=True)
class BrokerPosition:
    exchange: str
    tradingsymbol: str
    product: str
    quantity: int
    average_price: Decimal
    last_price: Decimal
    realised: Decimal
    unrealised: Decimal
    buy_quantity: int
    buy_value: Decimal
    sell_quantity: int
    sell_value: Decimal
    # Where the broker gives them (Kite does), the quantity carried into the trading day (negative
    # for a short) and today's buys and sells within the figures above: they say what the day
    # opened with without the fill list, which can lag the positions. None where it does not.
    overnight_quantity: int | None = None
    day_buy_quantity: int | None = None
    day_buy_value: Decimal | None = None
    day_sell_quantity: int | None = None
    day_sell_value: Decimal | None = None

    @property
    def day_figures(self) -> bool:
        """Whether the broker gave the start of the day's quantity and today's buys and sells."""
        return None not in (
            self.overnight_quantity,
            self.day_buy_quantity,
            self.day_buy_value,
            self.day_sell_quantity,
            self.day_sell_value,
        )


@dataclass(frozen=True)
class Holding:
    exchange: str
    tradingsymbol: str
    quantity: int
    average_price: Decimal
    last_price: Decimal
    close_price: Decimal


@dataclass(frozen=True)
class Quote:
    exchange: str
    tradingsymbol: str
    instrument_token: int
    last_price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    close: Decimal
    volume: int
    timestamp: datetime | None
    # The instrument's circuit limits today: the lowest and highest prices the exchange accepts an
    # order at (its price and its trigger). None where the broker does not give them.
    lower_circuit: Decimal | None = None
    upper_circuit: Decimal | None = None

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}"

    @property
    def circuit(self) -> tuple[Decimal, Decimal] | None:
        """(lower, upper) circuit limits, or None when the broker did not give both."""
        if self.lower_circuit is None or self.upper_circuit is None or self.upper_circuit <= 0:
            return None
        return self.lower_circuit, self.upper_circuit


@dataclass(frozen=True)
class Margins:
    available_cash: Decimal
    utilised: Decimal
    net: Decimal


@dataclass(frozen=True)
class InstrumentInfo:
    instrument_token: int
    exchange_token: int
    tradingsymbol: str
    name: str
    last_price: Decimal
    expiry: date | None
    strike: Decimal
    tick_size: Decimal
    lot_size: int
    instrument_type: str
    segment: str
    exchange: str


class Broker:
    """One broker account, optionally with a live session (``access_token``).

    Class attributes describe the broker:
    - ``code``: the registry code.
    - ``interactive_login``: True when a new session needs the trader in a browser
      (``login_url`` + ``complete_login``); False when ``login`` works unattended.
    - ``rate_limits``: the broker's published limits per call kind (``orders``,
      ``other``, ``quote``), each a list of (calls, per seconds); the shared rate budget
      enforces them for every process.
    - ``max_modifications``: how often one order may be modified.
    - ``tells_order_updates``: True when the broker reliably tells us every change of our
      orders as it happens, with their state and fills (``brokers.services.broker_order_update``):
      nothing then needs to ask it after we place, modify or cancel.
    - ``cancels_at_once``: True when a cancel the broker accepted has closed the order by the
      time it answers (the paper exchange). Otherwise the order is read back after a cancel:
      Kite answers once it has the request, and the exchange may still fill the order or refuse
      the cancel.
    - ``shared_market_data``: True when prices asked through one account are not that account's
      to spend: no per-trader credentials, quote budget or subscription behind them (the paper
      exchange). Otherwise a trader's session asks prices only for that trader's accounts.
    - ``feeds_instrument_prices``: True for the one broker whose price feed writes the instruments'
      last prices (``brokers.services.ticks_apply``: the paper exchange's ticker). Those prices are
      its market only: another broker's accounts are valued and checked at their own broker's prices
      (``brokers.selectors.prices_fed_by``), never at an invented one.

    Class methods say when its exchanges trade (``day_orders_end``, ``next_open``): the Indian
    exchanges' sessions (``brokers.markets``) unless an adapter trades otherwise.
    """

    code = ""
    interactive_login = False
    rate_limits: dict[str, list[tuple[int, float]]] = {
        "orders": [(10, 1), (400, 60), (5000, 86400)],
        "other": [(10, 1)],
        "quote": [(1, 1)],
    }
    max_modifications = 25
    tells_order_updates = False
    cancels_at_once = False
    shared_market_data = False
    feeds_instrument_prices = False

    def __init__(self, *, client_id: str, credentials: dict | None = None, access_token: str | None = None):
        self.client_id = client_id
        self.credentials = credentials or {}
        self.access_token = access_token

    # --- The exchanges' hours ----------------------------------------------------
    @classmethod
    def day_orders_end(cls, exchange: str, day: date) -> datetime:
        """When the DAY orders of trading day ``day`` on ``exchange`` that still rest are closed:
        at the exchange's close."""
        return markets.session(exchange, day)[1]

    @classmethod
    def next_open(cls, exchange: str, after: datetime) -> datetime:
        """When orders on ``exchange`` trade next after ``after`` (``after`` itself in a session)."""
        return markets.next_open(exchange, after)

    # --- Sessions ----------------------------------------------------------------
    def login(self) -> SessionTokens:
        """Open a new session unattended. Interactive brokers raise ``AuthError``."""
        raise NotImplementedError

    def login_url(self, *, state: str) -> str:
        """Where to send the trader to log in (interactive brokers); ``state`` comes back."""
        raise NotImplementedError

    def complete_login(self, *, request_token: str) -> SessionTokens:
        """Exchange the one-time token from the login redirect for a session."""
        raise NotImplementedError

    def refresh(self, *, refresh_token: str) -> SessionTokens:
        """Renew a session without the trader; ``AuthError`` when the broker cannot."""
        raise NotImplementedError

    def validate(self) -> str:
        """Check the session is alive; returns the broker's user id, or raises ``AuthError``."""
        raise NotImplementedError

    def logout(self) -> None:
        """End the session at the broker (idempotent)."""
        raise NotImplementedError

    # --- Orders ------------------------------------------------------------------
    def place_order(self, request: OrderRequest) -> PlacedOrder:
        """Send one order tagged ``request.tag``.

        Raises ``OrderRejected`` when the broker refuses it on the spot, ``InputError``
        for a malformed request, ``NetworkError`` when the outcome is unknown (the
        caller must then look the order up by tag, never send it again blindly).
        """
        raise NotImplementedError

    def modify_order(self, broker_order_id: str, change: OrderChange) -> None:
        """Change an open order. ``OrderRejected(MODIFICATION_CAP)`` past the broker's cap."""
        raise NotImplementedError

    def cancel_order(self, broker_order_id: str) -> None:
        """Cancel an open order; ``InputError`` when it is no longer open."""
        raise NotImplementedError

    def orders(self) -> list[BrokerOrder]:
        """Today's order book, every order in its latest state."""
        raise NotImplementedError

    def order(self, broker_order_id: str) -> BrokerOrder:
        """One order's latest state; ``OrderNotFound`` when the broker has no such order."""
        raise NotImplementedError

    def find_by_tag(self, tag: str) -> BrokerOrder | None:
        """The order placed with this tag today, or None: resolves an unknown outcome."""
        matches = [order for order in self.orders() if order.tag == tag]
        return matches[-1] if matches else None

    def order_trades(self, broker_order_id: str) -> list[BrokerTrade]:
        """The fills of one order."""
        raise NotImplementedError

    def trades(self) -> list[BrokerTrade]:
        """Today's fills, all orders."""
        raise NotImplementedError

    # --- Portfolio and market data ------------------------------------------------
    def positions(self) -> list[BrokerPosition]:
        """Net positions (carried and today's)."""
        raise NotImplementedError

    def holdings(self) -> list[Holding]:
        """Delivery holdings."""
        raise NotImplementedError

    def margins(self) -> Margins:
        """Funds: available cash, utilised, net."""
        raise NotImplementedError

    def quote(self, instruments: Iterable[str]) -> dict[str, Quote]:
        """Quotes keyed ``EXCHANGE:SYMBOL`` (with the circuit limits where the broker gives them);
        unknown instruments are left out."""
        raise NotImplementedError

    def ltp(self, instruments: Iterable[str]) -> dict[str, Decimal]:
        """Last prices keyed ``EXCHANGE:SYMBOL``."""
        return {key: quote.last_price for key, quote in self.quote(instruments).items()}

    def instruments(self, exchange: str | None = None) -> list[InstrumentInfo]:
        """The broker's instrument list (optionally one exchange)."""
        raise NotImplementedError
