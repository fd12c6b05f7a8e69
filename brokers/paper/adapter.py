"""The ``paper`` adapter: the platform's view of the paper exchange, called in-process.

It is the embedded default broker. It sees the exchange exactly as a real broker would
be seen: through sessions, orders, fills and quotes, with the client's fault knobs
applied to every call. The ``kite`` adapter pointed at the exchange's Kite face
exercises the same exchange over the real wire format.
"""

import contextvars
import functools
import logging
from datetime import date, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

from django.db import IntegrityError, OperationalError

from brokers import base, markets
from brokers.base import Status
from brokers.errors import (
    AuthError,
    BrokerUnavailable,
    InputError,
    NetworkError,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    RejectKind,
    classify_rejection,
)
from tradingplatform import background

from . import engine
from .models import PaperOrder

logger = logging.getLogger(__name__)

REJECTION_KINDS = {
    "tick_size": RejectKind.TICK_SIZE,
    "lot_size": RejectKind.LOT_SIZE,
    "instrument": RejectKind.INSTRUMENT,
    "price_band": RejectKind.PRICE_BAND,
    "modification_cap": RejectKind.MODIFICATION_CAP,
    "market_closed": RejectKind.MARKET_CLOSED,
}


def translate_errors(*, order_call: bool = False):
    """Exchange errors -> broker errors. For order calls, refusals become ``OrderRejected``."""

    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except (engine.ExchangeError, OperationalError, IntegrityError) as error:
                translated = broker_error(error, order_call=order_call)
                if translated is error:
                    raise
                raise translated from error

        return wrapper

    return decorator


def broker_error(error: Exception, *, order_call: bool = False) -> Exception:
    """The broker error an exchange error (or the exchange's own database failing) stands for."""
    if isinstance(error, engine.TokenException):
        return AuthError(error.message)
    if isinstance(error, engine.RateLimitExceeded):
        return RateLimited(error.message, retry_after=1.0)
    if isinstance(error, engine.AnswerLost):
        return NetworkError(error.message)
    if isinstance(error, engine.ServerError):
        return BrokerUnavailable(error.message)
    if isinstance(error, OperationalError | IntegrityError):
        # The exchange's own transaction failed (a lock timeout or deadlock) and
        # rolled back: like a broker's 503, the call did not happen.
        return BrokerUnavailable(f"the paper exchange was busy ({error})")
    if isinstance(error, engine.InputException):
        if "find that `order_id`" in error.message:
            return OrderNotFound(error.message)
        if order_call and error.kind in REJECTION_KINDS:
            return OrderRejected(REJECTION_KINDS[error.kind], error.message)
        return InputError(error.message)
    return error


def _terms(request: base.OrderRequest) -> dict:
    """An order's terms in the exchange's words (Kite's)."""
    return {
        "exchange": request.exchange,
        "tradingsymbol": request.tradingsymbol,
        "transaction_type": request.side,
        "order_type": request.order_type,
        "quantity": request.quantity,
        "product": request.product,
        "price": request.price,
        "trigger_price": request.trigger_price,
        "validity": request.validity,
        "tag": request.tag,
        "variety": request.variety,
    }


def _placed(order: PaperOrder, *, held: tuple | None = None) -> base.PlacedOrder:
    """The answer to a placement: the order, or ``OrderRejected`` when the RMS refused it.
    ``held``: its announcement, held back for the answer (``order_announce``)."""
    if order.status == PaperOrder.Status.REJECTED:
        raise OrderRejected(
            classify_rejection(order.status_message), order.status_message, broker_order_id=order.order_id
        )
    state = to_broker_order(order)
    if held is None:
        return base.PlacedOrder(broker_order_id=order.order_id, state=state)
    return base.PlacedOrder(
        broker_order_id=order.order_id, state=state, untold=lambda: _announced.add(held), fills=tuple(held[3])
    )


def broker_status(order: PaperOrder) -> str:
    if order.status == PaperOrder.Status.COMPLETE:
        return Status.FILLED
    if order.status == PaperOrder.Status.CANCELLED:
        return Status.CANCELLED
    if order.status == PaperOrder.Status.REJECTED:
        return Status.REJECTED
    return Status.PARTIALLY_FILLED if order.filled_quantity else Status.OPEN


def stop_triggered(order: PaperOrder) -> bool | None:
    """Whether a stop order triggered (``BrokerOrder.triggered``): one waiting is TRIGGER PENDING; one
    that triggered is the LIMIT / MARKET it became, OPEN (or filled), and keeps its trigger. None for
    a plain order, and for a stop cancelled or refused (the record does not say whether it had)."""
    if order.status == PaperOrder.Status.TRIGGER_PENDING:
        return False
    stop = order.order_type in ("SL", "SL-M") or order.trigger_price > 0
    if stop and (order.status in (PaperOrder.Status.OPEN, PaperOrder.Status.COMPLETE) or order.filled_quantity):
        return True
    return None


def to_broker_order(order: PaperOrder) -> base.BrokerOrder:
    return base.BrokerOrder(
        broker_order_id=order.order_id,
        tag=order.tag or None,
        exchange=order.instrument.exchange,
        tradingsymbol=order.instrument.tradingsymbol,
        side=order.transaction_type,
        order_type=order.order_type,
        product=order.product,
        validity=order.validity,
        quantity=order.quantity,
        price=order.price,
        trigger_price=order.trigger_price,
        status=broker_status(order),
        filled_quantity=order.filled_quantity,
        pending_quantity=order.pending_quantity,
        cancelled_quantity=order.cancelled_quantity,
        average_price=Decimal(order.average_price).quantize(Decimal("0.0001")),
        status_message=order.status_message or None,
        placed_at=order.placed_at,
        updated_at=order.updated_at,
        triggered=stop_triggered(order),
    )


def to_broker_trade(trade) -> base.BrokerTrade:
    return base.BrokerTrade(
        trade_id=trade.trade_id,
        broker_order_id=trade.order.order_id,
        exchange=trade.instrument.exchange,
        tradingsymbol=trade.instrument.tradingsymbol,
        side=trade.transaction_type,
        product=trade.product,
        quantity=trade.quantity,
        price=trade.price,
        filled_at=trade.filled_at,
        order_tag=trade.order.tag or None,
    )


def order_announce(
    client_id: str, state: base.BrokerOrder, fills: list[base.BrokerTrade], *, can_wait: bool = False
) -> None:
    """A paper order change was committed: tell the platform, with the other changes committed
    meanwhile (``broker_orders_update``), off the committing thread. ``can_wait``: a scheduled
    burst's own placement, which its placer records from the answer; it may wait for the burst to
    be sent (``background.Batch``); any other change (a fill of a resting stop-loss) is told at once.

    The placement this thread is sending (``PaperBroker.place_order``) is held back: its answer
    says the same, and carries its fills to the placer (``PlacedOrder.untold``, ``.fills``)."""
    change = (contextvars.copy_context(), client_id, state, fills)
    held = _held.get()
    if held is not None and held.tag == state.tag and held.change is None:
        held.change = change
        return
    _announced.add(change, can_wait=can_wait)


# The placement this thread is sending, while it is sent: its tag, and its announcement once it
# was committed (``order_announce``).
_held: contextvars.ContextVar[SimpleNamespace | None] = contextvars.ContextVar("paper placement held", default=None)


def _announce(changes: list[tuple[contextvars.Context, str, base.BrokerOrder, list[base.BrokerTrade]]]) -> None:
    from brokers.services import broker_orders_update

    broker_orders_update(broker="paper", changes=changes)  # like postbacks that carry the fills


# A scheduled burst's own fills wait while it is sent (bookkeeping a trader sees a moment later).
_announced = background.Batch(_announce, yields=True)


def to_quote(instrument) -> base.Quote:
    lower_circuit, upper_circuit = engine.price_band(instrument)  # as its Kite face's quote gives them
    return base.Quote(
        exchange=instrument.exchange,
        tradingsymbol=instrument.tradingsymbol,
        instrument_token=instrument.instrument_token,
        last_price=instrument.last_price,
        bid=instrument.bid,
        ask=instrument.ask,
        close=instrument.previous_close,
        volume=instrument.volume,
        timestamp=instrument.updated_at,
        lower_circuit=lower_circuit,
        upper_circuit=upper_circuit,
    )


class PaperBroker(base.Broker):
    code = "paper"
    interactive_login = False
    tells_order_updates = True  # in-process, after each change's commit (``order_announce``)
    cancels_at_once = True
    shared_market_data = True  # the platform's own exchange: no trader's credentials or budget behind a quote
    feeds_instrument_prices = True  # its ticker writes ``Instrument.last_price`` (``feed.publish_ticks``)

    # Its market trades round the clock; its DAY orders rest until midnight (``engine.day_orders_close``).
    @classmethod
    def day_orders_end(cls, exchange: str, day: date) -> datetime:
        return markets.date_start(day + timedelta(days=1))

    @classmethod
    def next_open(cls, exchange: str, after: datetime) -> datetime:
        return after

    def _token(self) -> str:
        if not self.access_token:
            raise engine.TokenException("No session: log in first.")
        return self.access_token

    def _client(self, *, write: bool = False):
        """The client behind this session, after the fault knobs (latency, 429, 5xx, lost answers)."""
        client = engine.client_for_access_token(api_key=None, access_token=self._token())
        return client, engine.faults_before(client, write=write)

    # --- Sessions ----------------------------------------------------------------
    @translate_errors()
    def login(self) -> base.SessionTokens:
        client = engine.client_get_or_create(user_id=self.client_id)
        if client.password:
            # Staff gave it a password for the Kite-style login page: it is someone's, signed in to
            # with that password (a kite account), never taken by its client id alone.
            raise engine.TokenException(
                f"{client.user_id} signs in with its password at the Kite-style login page; add it as a Kite account."
            )
        token, expires_at = engine.session_open(client=client)
        self.access_token = token
        return base.SessionTokens(access_token=token, expires_at=expires_at, user_id=client.user_id)

    def refresh(self, *, refresh_token: str) -> base.SessionTokens:
        return self.login()

    @translate_errors()
    def validate(self) -> str:
        client, faults = self._client()
        faults.after()
        return client.user_id

    @translate_errors()
    def logout(self) -> None:
        if self.access_token:
            engine.session_close(access_token=self.access_token)

    # --- Orders ------------------------------------------------------------------
    @translate_errors(order_call=True)
    def place_order(self, request: base.OrderRequest) -> base.PlacedOrder:
        # The client and the instrument in one read (``_client`` and ``order_place``'s lookup).
        client, instrument = engine.client_and_instrument(
            access_token=self._token(), exchange=request.exchange, tradingsymbol=request.tradingsymbol
        )
        faults = engine.faults_before(client, write=True)
        if client.latency_ms:
            instrument = None  # the order reaches the exchange after the latency: its quote then
        # Its announcement is held for the answer, unless the answer is to be lost (then it is told
        # as any change is) or a caller's transaction defers the commit (it is told after that).
        held = SimpleNamespace(tag=request.tag, change=None) if request.tag and not faults.lose_answer else None
        holding = _held.set(held)
        try:
            order = engine.order_place(client=client, **_terms(request), instrument=instrument)
            faults.after()
            return _placed(order, held=held.change if held is not None else None)
        except Exception:
            if held is not None and held.change is not None:
                _announced.add(held.change)  # committed, but no answer says so: told as any change
            raise
        finally:
            _held.reset(holding)

    @classmethod
    def place_together(cls, calls: list[tuple["PaperBroker", base.OrderRequest]]) -> list:
        """``place_order`` of several sessions' orders at once, in one transaction of the exchange
        (``engine.orders_place_many``). For each: its ``PlacedOrder``, the broker error it raised, or
        None where it is to be placed alone (its client has call knobs set). When the whole fails
        (nothing of it was written, unless its commit's answer was lost) each gets a
        ``BrokerUnavailable``, after which ``AccountBroker.place_order`` looks it up before sending it."""
        placements = [
            engine.Placement(access_token=broker.access_token or "", **_terms(request)) for broker, request in calls
        ]
        try:
            results = engine.orders_place_many(placements)
        except Exception as error:  # rolled back, or its commit's answer lost: looked up before a re-send
            if not isinstance(error, OperationalError | IntegrityError):
                logger.exception("the paper exchange failed placing %s orders together", len(calls))
            return [BrokerUnavailable(f"the paper exchange failed ({error})") for _call in calls]
        answers = []
        for result in results:
            if isinstance(result, PaperOrder):
                try:
                    answers.append(_placed(result))
                except OrderRejected as rejected:
                    answers.append(rejected)
            else:
                answers.append(None if result is None else broker_error(result, order_call=True))
        return answers

    @translate_errors(order_call=True)
    def modify_order(self, broker_order_id: str, change: base.OrderChange) -> None:
        client, faults = self._client(write=True)
        engine.order_modify(
            client=client,
            order_id=broker_order_id,
            quantity=change.quantity,
            price=change.price,
            trigger_price=change.trigger_price,
            order_type=change.order_type,
        )
        faults.after()

    @translate_errors()
    def cancel_order(self, broker_order_id: str) -> None:
        client, faults = self._client(write=True)
        engine.order_cancel(client=client, order_id=broker_order_id)
        faults.after()

    @translate_errors()
    def orders(self) -> list[base.BrokerOrder]:
        client, faults = self._client()
        result = [to_broker_order(order) for order in engine.order_book(client)]
        faults.after()
        return result

    @translate_errors()
    def order(self, broker_order_id: str) -> base.BrokerOrder:
        client, faults = self._client()
        result = to_broker_order(engine.order_of(client, broker_order_id))
        faults.after()
        return result

    @translate_errors()
    def find_by_tag(self, tag: str) -> base.BrokerOrder | None:
        client, faults = self._client()
        order = engine.orders_of(client).filter(tag=tag).last()
        faults.after()
        return to_broker_order(order) if order else None

    @translate_errors()
    def order_trades(self, broker_order_id: str) -> list[base.BrokerTrade]:
        client, faults = self._client()
        engine.order_of(client, broker_order_id)
        result = [to_broker_trade(trade) for trade in engine.trades_of(client, broker_order_id)]
        faults.after()
        return result

    @translate_errors()
    def trades(self) -> list[base.BrokerTrade]:
        client, faults = self._client()
        result = [to_broker_trade(trade) for trade in engine.trade_book(client)]
        faults.after()
        return result

    # --- Portfolio and market data ------------------------------------------------
    @translate_errors()
    def positions(self) -> list[base.BrokerPosition]:
        client, faults = self._client()
        result = [
            base.BrokerPosition(
                exchange=row.instrument.exchange,
                tradingsymbol=row.instrument.tradingsymbol,
                product=row.product,
                quantity=row.quantity,
                average_price=row.average_price,
                last_price=row.instrument.last_price,
                realised=row.realised,
                unrealised=row.unrealised,
                buy_quantity=row.buy_quantity,
                buy_value=row.buy_value,
                sell_quantity=row.sell_quantity,
                sell_value=row.sell_value,
                overnight_quantity=row.overnight_quantity,
                day_buy_quantity=row.day_buy_quantity,
                day_buy_value=row.day_buy_value,
                day_sell_quantity=row.day_sell_quantity,
                day_sell_value=row.day_sell_value,
            )
            for row in engine.positions_of(client)
        ]
        faults.after()
        return result

    @translate_errors()
    def holdings(self) -> list[base.Holding]:
        client, faults = self._client()
        result = [
            base.Holding(
                exchange=instrument.exchange,
                tradingsymbol=instrument.tradingsymbol,
                quantity=quantity,
                average_price=average,
                last_price=instrument.last_price,
                close_price=instrument.previous_close,
            )
            for instrument, quantity, average in engine.holdings_of(client)
        ]
        faults.after()
        return result

    @translate_errors()
    def margins(self) -> base.Margins:
        client, faults = self._client()
        funds = engine.margins_of(client)
        faults.after()
        return base.Margins(
            available_cash=funds["cash"] - funds["blocked"], utilised=funds["blocked"], net=funds["cash"]
        )

    @translate_errors()
    def quote(self, instruments) -> dict[str, base.Quote]:
        client, faults = self._client()
        result = {key: to_quote(i) for key, i in engine.instruments_by_keys(instruments).items()}
        faults.after()
        return result

    @translate_errors()
    def instruments(self, exchange: str | None = None) -> list[base.InstrumentInfo]:
        from .models import PaperInstrument

        rows = PaperInstrument.objects.all()
        if exchange:
            rows = rows.filter(exchange=exchange)
        return [
            base.InstrumentInfo(
                instrument_token=i.instrument_token,
                exchange_token=i.exchange_token,
                tradingsymbol=i.tradingsymbol,
                name=i.name,
                last_price=i.last_price,
                expiry=i.expiry,
                strike=i.strike,
                tick_size=i.tick_size,
                lot_size=i.lot_size,
                instrument_type=i.instrument_type,
                segment=i.segment,
                exchange=i.exchange,
            )
            for i in rows
        ]
