"""The ``kite`` adapter: Kite Connect v3 over ``requests``.

One pooled ``requests.Session`` per account, a timeout on every call (all of it: ``brokers.http``),
``X-Kite-Version: 3`` and ``Authorization: token api_key:access_token``. Kite's error
types map onto ours (TokenException -> AuthError, 429 -> RateLimited, 5xx and
NetworkException -> BrokerUnavailable, or to an order call a lost answer (NetworkError), as
is a timeout or an answer that cannot be read; order refusals -> OrderRejected). The base URL is
``settings.KITE_API_URL``: Kite itself by default, the paper exchange's Kite face in tests and demos.
"""

import csv
import hashlib
import io
import math
import threading
from datetime import date, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from urllib.parse import quote as urlquote
from urllib.parse import urlencode

import requests
from django.conf import settings
from django.utils import timezone

from brokers import base
from brokers.base import IST, Status
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
from brokers.http import Deadline, DeadlineAdapter

# Since April 2026 Kite refuses API orders of these types without ``market_protection``; -1 asks
# for Kite's automatic protection band (a percentage 1-100 would set our own).
MARKET_PROTECTED_TYPES = ("MARKET", "SL-M")
AUTO_MARKET_PROTECTION = -1

# Kite's error types that refuse an order call as such (its documented exceptions): an order the
# OMS would not take, funds short for it (MarginException), holdings short for a sell
# (HoldingException). Not a malformed request (InputError, kind "input"), whatever the wording.
REFUSAL_TYPES = frozenset({"OrderException", "MarginException", "HoldingException"})

_sessions: dict[tuple[str, str], requests.Session] = {}
_sessions_lock = threading.Lock()


def http_session(api_key: str, client_id: str) -> requests.Session:
    """The pooled HTTP session of one account, shared by every adapter instance for it."""
    key = (api_key, client_id)
    with _sessions_lock:
        if key not in _sessions:
            session = requests.Session()
            adapter = DeadlineAdapter(pool_connections=2, pool_maxsize=10, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers.update({"X-Kite-Version": "3", "User-Agent": "tradingplatform/1"})
            _sessions[key] = session
        return _sessions[key]


def parse_time(value) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=IST)


def decimal(value) -> Decimal:
    return Decimal(str(value if value is not None else 0))


def _circuit_limit(value) -> Decimal | None:
    """A quote's circuit limit, or None where Kite gives none (0 or missing: an index has no band)."""
    limit = decimal(value)
    return limit if limit > 0 else None


def order_status(data: dict) -> str:
    status = (data.get("status") or "").upper()
    filled = int(data.get("filled_quantity") or 0)
    if status == "COMPLETE":
        return Status.FILLED
    if status.startswith("CANCELLED"):
        return Status.CANCELLED
    if status == "REJECTED":
        return Status.REJECTED
    # UPDATE: a postback's word for an open order that changed (a partial fill, a modify).
    if status in ("OPEN", "TRIGGER PENDING", "MODIFIED", "AMO REQ RECEIVED", "UPDATE"):
        return Status.PARTIALLY_FILLED if filled else Status.OPEN
    return Status.PARTIALLY_FILLED if filled else Status.SUBMITTED


# Kite's statuses while an order or a change of it is being validated: its book shows the old
# terms until then (order history: MODIFY VALIDATION PENDING, MODIFY PENDING and MODIFIED at the
# old price, then OPEN at the new).
TERMS_IN_FLUX = frozenset(
    {
        "PUT ORDER REQ RECEIVED",
        "VALIDATION PENDING",
        "OPEN PENDING",
        "MODIFY VALIDATION PENDING",
        "MODIFY PENDING",
        "MODIFIED",
    }
)


def stop_triggered(data: dict) -> bool | None:
    """Whether a stop order triggered (``BrokerOrder.triggered``): Kite's status is TRIGGER PENDING
    until it does, OPEN after, COMPLETE once filled; any fill says so. A stop is an SL / SL-M, or
    the plain order one became (the paper exchange's Kite face shows that, with the trigger it
    had). None for a plain order, and for a status that does not say: a cancel, a change being
    validated, and a postback's UPDATE with nothing filled, which Kite sends for a modify of a
    stop still pending too."""
    status = str(data.get("status") or "").upper()
    if status == "TRIGGER PENDING":
        return False
    stop = data.get("order_type") in ("SL", "SL-M") or decimal(data.get("trigger_price")) > 0
    if stop and (status in ("OPEN", "COMPLETE") or int(data.get("filled_quantity") or 0) > 0):
        return True
    return None


def retry_after_s(value: str | None, default: float = 1.0) -> float:
    """A ``Retry-After`` header as seconds to wait: delay seconds or an HTTP date (RFC 9110),
    a date past meaning now. What is neither (or no finite wait) is ``default``, never an error:
    the call was refused either way."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        if when.tzinfo is None:
            return default
        return max((when - timezone.now()).total_seconds(), 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


def optional_int(value) -> int | None:
    """A figure Kite may leave out: None when it does (not 0, which would be a claim)."""
    return None if value is None else int(value)


def optional_decimal(value) -> Decimal | None:
    return None if value is None else decimal(value)


def to_order(data: dict) -> base.BrokerOrder:
    return base.BrokerOrder(
        broker_order_id=str(data["order_id"]),
        tag=data.get("tag"),
        exchange=data.get("exchange", ""),
        tradingsymbol=data.get("tradingsymbol", ""),
        side=data.get("transaction_type", ""),
        order_type=data.get("order_type", ""),
        product=data.get("product", ""),
        validity=data.get("validity", "DAY"),
        quantity=int(data.get("quantity") or 0),
        price=decimal(data.get("price")),
        trigger_price=decimal(data.get("trigger_price")),
        status=order_status(data),
        filled_quantity=int(data.get("filled_quantity") or 0),
        pending_quantity=int(data.get("pending_quantity") or 0),
        cancelled_quantity=int(data.get("cancelled_quantity") or 0),
        average_price=decimal(data.get("average_price")),
        status_message=data.get("status_message"),
        placed_at=parse_time(data.get("order_timestamp")),
        updated_at=parse_time(data.get("exchange_update_timestamp") or data.get("order_timestamp")),
        raw=data,
        terms_settled=str(data.get("status") or "").upper() not in TERMS_IN_FLUX,
        triggered=stop_triggered(data),
    )


def to_trade(data: dict) -> base.BrokerTrade:
    return base.BrokerTrade(
        trade_id=str(data["trade_id"]),
        broker_order_id=str(data["order_id"]),
        exchange=data["exchange"],
        tradingsymbol=data["tradingsymbol"],
        side=data["transaction_type"],
        product=data.get("product", ""),
        quantity=int(data["quantity"]),
        price=decimal(data.get("average_price")),
        filled_at=parse_time(data.get("fill_timestamp") or data.get("exchange_timestamp")),
    )


def to_position(row: dict) -> base.BrokerPosition:
    """A row of Kite's ``net`` positions."""
    return base.BrokerPosition(
        exchange=row["exchange"],
        tradingsymbol=row["tradingsymbol"],
        product=row["product"],
        quantity=int(row["quantity"]),
        average_price=decimal(row["average_price"]),
        last_price=decimal(row["last_price"]),
        realised=decimal(row.get("realised")),
        unrealised=decimal(row.get("unrealised")),
        buy_quantity=int(row.get("buy_quantity") or 0),
        buy_value=decimal(row.get("buy_value")),
        sell_quantity=int(row.get("sell_quantity") or 0),
        sell_value=decimal(row.get("sell_value")),
        overnight_quantity=optional_int(row.get("overnight_quantity")),
        day_buy_quantity=optional_int(row.get("day_buy_quantity")),
        day_buy_value=optional_decimal(row.get("day_buy_value")),
        day_sell_quantity=optional_int(row.get("day_sell_quantity")),
        day_sell_value=optional_decimal(row.get("day_sell_value")),
    )


def holding_quantity(row: dict) -> int:
    """What a Kite holding holds, settled or not. Kite documents ``quantity`` as "T+1 + realised",
    while accounts are seen answering ``quantity`` 0 and ``t1_quantity`` 5 for shares bought on the
    last trading day and not settled yet (Kite's "Qty 0, T1 5"). Read either way: the larger of
    ``quantity`` and settled (``realised_quantity``) plus unsettled, so T+1 shares are neither
    missed nor counted twice."""
    quantity, t1 = int(row["quantity"]), int(row.get("t1_quantity") or 0)
    realised = row.get("realised_quantity")
    if not t1 or realised is None:
        return quantity
    return max(quantity, int(realised) + t1)


def to_holding(row: dict) -> base.Holding:
    return base.Holding(
        exchange=row["exchange"],
        tradingsymbol=row["tradingsymbol"],
        quantity=holding_quantity(row),
        average_price=decimal(row["average_price"]),
        last_price=decimal(row["last_price"]),
        close_price=decimal(row.get("close_price")),
    )


class KiteBroker(base.Broker):
    code = "kite"
    interactive_login = True

    @property
    def api_key(self) -> str:
        return self.credentials.get("api_key", "")

    def _http(self) -> requests.Session:
        return http_session(self.api_key, self.client_id)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params=None,
        data=None,
        order_call: bool = False,
        changes_order: bool = False,
        raw=False,
        timeout_s: float | None = None,
    ):
        """One call; ``order_call`` (a placement or modify: Kite's refusals are ``OrderRejected``)
        implies ``changes_order`` (a cancel too: a server error or an answer that cannot be read
        leaves the outcome unknown, a ``NetworkError``). ``timeout_s``: the time the whole call has
        (``KITE_TIMEOUT_S`` unless given)."""
        changes_order = changes_order or order_call
        timeout_s = settings.KITE_TIMEOUT_S if timeout_s is None else timeout_s
        headers = {}
        if self.access_token:
            headers["Authorization"] = f"token {self.api_key}:{self.access_token}"
        # The timeout bounds the whole call, not only each socket read (``requests``' timeout): an
        # answer trickled in slower is cut off then, and is a timeout like any other.
        deadline = Deadline(timeout_s)
        timed_out = f"Kite did not answer within {timeout_s}s"
        try:
            with deadline:
                response = self._http().request(
                    method,
                    settings.KITE_API_URL.rstrip("/") + path,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=settings.KITE_TIMEOUT_S,  # each connect and read too
                )
        except Exception as exc:
            # Cut off at the deadline, whatever that made ``requests`` raise: a timeout (to an
            # order call a lost answer, looked up by tag), never a different error.
            if deadline.cut_off or isinstance(exc, requests.Timeout):
                raise NetworkError(timed_out) from exc
            if isinstance(exc, requests.ConnectionError):
                raise NetworkError("Could not reach Kite") from exc
            if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
                # The connection dropped while the answer came in, or it cannot be decoded: like a
                # timeout, it does not say what Kite did (to an order call, a lost answer: looked up by tag).
                raise NetworkError("Kite's answer broke off before it could be read") from exc
            raise
        if deadline.cut_off:
            # Cut off as the answer came in: an answer that ends with the connection (no length)
            # reads as whole, but is what Kite had sent by then.
            raise NetworkError(timed_out)
        if response.status_code == 429:
            raise RateLimited("Kite: too many requests", retry_after=retry_after_s(response.headers.get("Retry-After")))
        content_type = response.headers.get("Content-Type", "")
        if raw and response.ok and "csv" in content_type:
            return response.text
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not (body.get("status") in ("success", "error") or body.get("error_type")):
            # A proxy's or firewall's page in front of Kite (its own JSON too: Kite's answers all
            # carry ``status``), or a cut body: it does not say what Kite did. To an order call that
            # is a lost answer (looked up by tag, reconciled), never a refusal nor a change done;
            # to a read, a broker not answering properly for now.
            raise self._server_error(changes_order)(f"Kite answered {response.status_code} without Kite's JSON")
        if body.get("status") == "error" or body.get("error_type"):
            self._raise(response.status_code, body, order_call=order_call, changes_order=changes_order)
        if response.status_code >= 500:
            raise self._server_error(changes_order)(f"Kite answered {response.status_code}")
        return body.get("data")

    @staticmethod
    def _server_error(changes_order: bool) -> type[NetworkError]:
        """A 5xx (or Kite's NetworkException) to an order call does not say the order was not
        placed: a gateway's 502/504, or Kite losing the OMS's answer, may come after it was. So it
        is a lost answer (looked up by tag, then reconciled), never "refused, send it again"."""
        return NetworkError if changes_order else BrokerUnavailable

    @staticmethod
    def _raise(status: int, body: dict, *, order_call: bool, changes_order: bool):
        error_type = body.get("error_type") or "GeneralException"
        message = body.get("message") or error_type
        if error_type == "TokenException":
            raise AuthError(message)
        if status >= 500 or error_type in ("NetworkException", "DataException"):
            raise KiteBroker._server_error(changes_order)(message)
        if "find that `order_id`" in message or "order not found" in message.lower():
            raise OrderNotFound(message)
        if changes_order and error_type == "GeneralException":
            # Kite's unclassified error (its type too when the answer names none), whatever the
            # HTTP status: it does not say the order call was not done, so it is a lost answer.
            raise NetworkError(message)
        kind = classify_rejection(message)
        if error_type == "MarginException" and kind == RejectKind.OTHER:
            kind = RejectKind.FUNDS  # Kite's type says it: funds short for the order, whatever the wording
        if order_call and (error_type in REFUSAL_TYPES or kind not in ("other", "input")):
            raise OrderRejected(kind, message)
        raise InputError(message)

    # --- Sessions ----------------------------------------------------------------
    def login(self) -> base.SessionTokens:
        raise AuthError("Kite needs the trader to log in on Kite's page (Connect on the accounts page).")

    def refresh(self, *, refresh_token: str) -> base.SessionTokens:
        raise AuthError("Kite sessions cannot be renewed without the trader; reconnect.")

    def login_url(self, *, state: str) -> str:
        query = urlencode({"api_key": self.api_key, "v": "3"})
        redirect_params = urlquote(urlencode({"state": state}))
        return f"{settings.KITE_LOGIN_URL}?{query}&redirect_params={redirect_params}"

    def complete_login(self, *, request_token: str) -> base.SessionTokens:
        secret = self.credentials.get("api_secret", "")
        checksum = hashlib.sha256(f"{self.api_key}{request_token}{secret}".encode()).hexdigest()
        data = self._request(
            "POST",
            "/session/token",
            data={"api_key": self.api_key, "request_token": request_token, "checksum": checksum},
        )
        self.access_token = data["access_token"]
        return base.SessionTokens(
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token") or None,
            expires_at=base.next_morning_expiry(timezone.now()),
            user_id=data.get("user_id", ""),
        )

    def validate(self) -> str:
        return self._request("GET", "/user/profile")["user_id"]

    def logout(self) -> None:
        if self.access_token:
            self._request(
                "DELETE", "/session/token", params={"api_key": self.api_key, "access_token": self.access_token}
            )

    # --- Orders ------------------------------------------------------------------
    def place_order(self, request: base.OrderRequest) -> base.PlacedOrder:
        data = {
            "exchange": request.exchange,
            "tradingsymbol": request.tradingsymbol,
            "transaction_type": request.side,
            "quantity": request.quantity,
            "product": request.product,
            "order_type": request.order_type,
            "validity": request.validity,
            "tag": request.tag,
        }
        if request.price is not None:
            data["price"] = str(request.price)
        if request.trigger_price is not None:
            data["trigger_price"] = str(request.trigger_price)
        if request.order_type in MARKET_PROTECTED_TYPES:
            data["market_protection"] = AUTO_MARKET_PROTECTION
        result = self._request("POST", f"/orders/{request.variety}", data=data, order_call=True)
        if not isinstance(result, dict) or not result.get("order_id"):
            raise NetworkError(f"Kite's answer to placing {request.tag} has no order id")
        return base.PlacedOrder(broker_order_id=str(result["order_id"]))

    def modify_order(self, broker_order_id: str, change: base.OrderChange) -> None:
        data = {
            name: str(value)
            for name, value in (
                ("quantity", change.quantity),
                ("price", change.price),
                ("trigger_price", change.trigger_price),
                ("order_type", change.order_type),
            )
            if value is not None
        }
        if change.order_type in MARKET_PROTECTED_TYPES:
            data["market_protection"] = str(AUTO_MARKET_PROTECTION)
        self._request("PUT", f"/orders/regular/{broker_order_id}", data=data, order_call=True)

    def cancel_order(self, broker_order_id: str) -> None:
        self._request("DELETE", f"/orders/regular/{broker_order_id}", changes_order=True)

    def orders(self) -> list[base.BrokerOrder]:
        return [to_order(row) for row in self._request("GET", "/orders")]

    def order(self, broker_order_id: str) -> base.BrokerOrder:
        history = self._request("GET", f"/orders/{broker_order_id}")
        if not history:
            raise OrderNotFound(f"Kite has no order {broker_order_id}")
        return to_order(history[-1])

    def order_trades(self, broker_order_id: str) -> list[base.BrokerTrade]:
        return [to_trade(row) for row in self._request("GET", f"/orders/{broker_order_id}/trades")]

    def trades(self) -> list[base.BrokerTrade]:
        return [to_trade(row) for row in self._request("GET", "/trades")]

    # --- Portfolio and market data ------------------------------------------------
    def positions(self) -> list[base.BrokerPosition]:
        return [to_position(row) for row in self._request("GET", "/portfolio/positions")["net"]]

    def holdings(self) -> list[base.Holding]:
        return [to_holding(row) for row in self._request("GET", "/portfolio/holdings")]

    def margins(self) -> base.Margins:
        equity = self._request("GET", "/user/margins/equity")
        return base.Margins(
            available_cash=decimal(equity["net"]),
            utilised=decimal(equity["utilised"]["debits"]),
            net=decimal(equity["available"]["cash"]),
        )

    def quote(self, instruments) -> dict[str, base.Quote]:
        keys = list(instruments)
        if not keys:
            return {}
        data = self._request("GET", "/quote", params=[("i", key) for key in keys])
        quotes = {}
        for key, row in data.items():
            exchange, _, symbol = key.partition(":")
            depth = row.get("depth") or {}
            best_bid = (depth.get("buy") or [{}])[0].get("price")
            best_ask = (depth.get("sell") or [{}])[0].get("price")
            quotes[key] = base.Quote(
                exchange=exchange,
                tradingsymbol=symbol,
                instrument_token=int(row["instrument_token"]),
                last_price=decimal(row["last_price"]),
                bid=decimal(best_bid) if best_bid else None,
                ask=decimal(best_ask) if best_ask else None,
                close=decimal((row.get("ohlc") or {}).get("close")),
                volume=int(row.get("volume") or 0),
                timestamp=parse_time(row.get("timestamp")),
                lower_circuit=_circuit_limit(row.get("lower_circuit_limit")),
                upper_circuit=_circuit_limit(row.get("upper_circuit_limit")),
            )
        return quotes

    def ltp(self, instruments) -> dict[str, Decimal]:
        keys = list(instruments)
        if not keys:
            return {}
        data = self._request("GET", "/quote/ltp", params=[("i", key) for key in keys])
        return {key: decimal(row["last_price"]) for key, row in data.items()}

    def instruments(self, exchange: str | None = None) -> list[base.InstrumentInfo]:
        # The day's dump is megabytes: it has longer than a call's usual timeout to come in.
        text = self._request(
            "GET",
            f"/instruments/{exchange}" if exchange else "/instruments",
            raw=True,
            timeout_s=max(settings.KITE_INSTRUMENTS_TIMEOUT_S, settings.KITE_TIMEOUT_S),
        )
        return parse_instruments_csv(text)


def parse_instruments_csv(text: str) -> list[base.InstrumentInfo]:
    """Kite's instrument dump (CSV) as broker-neutral rows. ``ValueError`` naming the line and the
    field of a value that is missing or is not what the field holds (a number, a date)."""
    rows = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        rows.append(
            base.InstrumentInfo(
                instrument_token=_csv_field(row, line, "instrument_token", int),
                exchange_token=_csv_field(row, line, "exchange_token", lambda value: int(value or 0)),
                tradingsymbol=_csv_field(row, line, "tradingsymbol"),
                name=_csv_field(row, line, "name"),
                last_price=_csv_field(row, line, "last_price", lambda value: decimal(value or 0)),
                expiry=_csv_field(row, line, "expiry", lambda value: date.fromisoformat(value) if value else None),
                strike=_csv_field(row, line, "strike", lambda value: decimal(value or 0)),
                tick_size=_csv_field(row, line, "tick_size", _finite_decimal),
                lot_size=_csv_field(row, line, "lot_size", int),
                instrument_type=_csv_field(row, line, "instrument_type"),
                segment=_csv_field(row, line, "segment"),
                exchange=_csv_field(row, line, "exchange"),
            )
        )
    return rows


def _csv_field(row: dict, line: int, name: str, convert=str):
    """One field of a dump's row, converted; ``ValueError`` naming the line and the field."""
    if row.get(name) is None:
        raise ValueError(f"line {line}: no {name}")
    try:
        return convert(row[name])
    except (TypeError, ValueError, ArithmeticError):
        raise ValueError(f"line {line}: {name} {row[name]!r} is not valid") from None


def _finite_decimal(value) -> Decimal:
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a number")
    return number
