import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal

from django.db.models import Case, Q, Value, When

from tradingplatform.memo import Memo

from . import base, registry
from .models import Instrument

logger = logging.getLogger(__name__)

# Lot and tick sizes change at most daily (and ``instruments_load`` clears this); last prices
# move every second, so readers of a price ask the database (``instrument_last_price``).
_by_symbol = Memo("instrument by symbol", ttl_s=60)
# Another broker's last prices, asked of it (``instrument_last_price``): kept a moment, so a basket's
# or a scheduled time's MARKET orders in one instrument cost one quote call, not one each (Kite
# allows one a second). The market's price: the same for every account at that broker.
BROKER_PRICE_KEEP_S = 2
_broker_prices = Memo("last price at a broker", ttl_s=BROKER_PRICE_KEEP_S)
# A broker's last prices its caller has just asked it for (``broker_prices_known``): (broker, prices).
_known_prices: ContextVar[tuple[str, dict[str, Decimal]] | None] = ContextVar("broker prices known", default=None)


def instrument_by_symbol(exchange: str, tradingsymbol: str) -> Instrument | None:
    """The instrument, or None. Memoized per process: its last price may be a minute old."""
    return _by_symbol.get(
        (exchange, tradingsymbol),
        lambda: Instrument.objects.filter(exchange=exchange, tradingsymbol=tradingsymbol).first(),
    )


def prices_fed_by(broker: str) -> bool:
    """Whether the instruments' last prices are this broker's market (``Broker.feeds_instrument_prices``)."""
    return registry.get(broker).feeds_instrument_prices


def instrument_last_price(instrument: Instrument, *, account):
    """The instrument's last price at ``account``'s broker, or None when there is none to be had.

    ``Instrument.last_price`` is the paper exchange's ticker's (``services.ticks_apply``): read from
    the database for an account at the paper exchange. Any other broker's account asks its own
    broker (one quote call, its answer kept ``BROKER_PRICE_KEEP_S`` for every account at that
    broker): the paper exchange's random walk is not that market's price.
    """
    if prices_fed_by(account.broker):
        return Instrument.objects.filter(pk=instrument.pk).values_list("last_price", flat=True).first()
    known = _known_prices.get()
    if known is not None and known[0] == account.broker and (price := known[1].get(instrument.key)):
        return price
    return _broker_prices.get_many([(account.broker, instrument.key)], lambda keys: _asked(account, keys)).get(
        (account.broker, instrument.key)
    )


@contextmanager
def broker_prices_known(broker: str, prices: dict[str, Decimal]) -> Iterator[None]:
    """Within it, ``instrument_last_price`` of an account at ``broker`` is its price in ``prices``
    (keyed ``EXCHANGE:SYMBOL``; the broker's last prices the caller has just asked it for: a
    monitoring run's), not asked again: the run's checks of the orders it places or moves cost no
    broker call of their own (and no wait for its quote budget)."""
    token = _known_prices.set((broker, prices))
    try:
        yield
    finally:
        _known_prices.reset(token)


def _asked(account, keys: list[tuple[str, str]]) -> dict:
    """``account``'s broker's last prices of ``keys`` ((broker, ``EXCHANGE:SYMBOL``)), in one quote
    call: {key: price}, without those it has none for (0: not traded yet); {} when the call fails
    (logged: each check then has no price, or asks again)."""
    from .client import AccountBroker  # the client imports services, which import this module
    from .errors import BrokerError

    try:
        prices = AccountBroker(account).ltp([key for _broker, key in keys])
    except BrokerError as error:
        logger.warning("account %s: no last prices from its broker: %r", account.pk, error)
        return {}
    return {(account.broker, key): price for key, price in prices.items() if price and price > 0}


def instruments_last_prices_asked(instruments, *, account) -> None:
    """Ask ``account``'s broker for the last prices of ``instruments`` not kept at hand, in one
    quote call, and keep them as ``instrument_last_price`` keeps one (``BROKER_PRICE_KEEP_S``): for
    orders about to be checked together (a scheduled time's), which would each ask for their own,
    one a second (Kite's quote budget). Nothing for a broker that feeds the instruments' prices. A
    failed call is logged; each then asks for its own as before."""
    if prices_fed_by(account.broker):
        return
    _broker_prices.get_many(
        [(account.broker, instrument.key) for instrument in instruments], lambda keys: _asked(account, keys)
    )


def instruments_changed() -> None:
    _by_symbol.clear()


def instruments_tradable(today=None):
    """Instruments that can still be traded here: no expiry, or one today (IST) or later, and not
    on an exchange whose quantities need a contract multiplier (``base.MULTIPLIED_EXCHANGES``).

    Expired contracts stay in the table (positions on them still exist); they only stop
    being offered.
    """
    unexpired = Instrument.objects.filter(Q(expiry__isnull=True) | Q(expiry__gte=today or base.ist_today()))
    return unexpired.exclude(exchange__in=base.MULTIPLIED_EXCHANGES)


def instruments_search(query: str, *, limit: int = 100) -> tuple[list[Instrument], bool]:
    """Tradable instruments whose symbol starts with, or whose name contains, the query, the symbol
    typed first, then symbols starting with it, then names containing it. (rows, truncated)

    Expired contracts are left out (``instruments_tradable``).
    """
    rows = instruments_tradable()
    query = (query or "").strip()[:64]
    order = ["exchange", "tradingsymbol"]
    if query:
        rows = rows.filter(Q(tradingsymbol__istartswith=query) | Q(name__icontains=query))
        # The symbol typed first, then the symbols that start with it (a real dump has hundreds of
        # contracts starting with an equity's symbol: ordered by exchange alone, NFO's came first
        # and the equity never showed among the first rows).
        closeness = Case(
            When(tradingsymbol__iexact=query, then=Value(0)),
            When(tradingsymbol__istartswith=query, then=Value(1)),
            default=Value(2),
        )
        order.insert(0, closeness)
    found = list(rows.order_by(*order)[: limit + 1])
    return found[:limit], len(found) > limit
