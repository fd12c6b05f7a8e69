"""The API client: typed methods over ``requests``, with safe retries.

Retries
    A call is retried (up to ``retries`` times) on 429, waiting the server's ``Retry-After``
    seconds (a wait longer than ``max_retry_wait`` is not waited: ``RateLimited`` is raised at
    once, with its ``retry_after``), and on 500/502/503/504, connection errors and timeouts,
    waiting the ``Retry-After`` a 503 gives (a longer one than ``max_retry_wait`` raised at once
    as ``ServerError``), else an exponential backoff with jitter (``backoff * 2**attempt``, at most
    ``max_retry_wait``, scaled by a random factor in [0.5, 1]). Other 4xx answers (413 too) are never retried.

    A request the server may have carried out (its answer was lost) is repeated only when
    repeating it cannot do anything twice: reads, PUT/PATCH/DELETE, order placement and basket
    placement and scheduling an order (which always carry an ``Idempotency-Key``: the caller's,
    or a uuid4 the client makes, the same on every retry of that call), cancels and strategy
    signals (a signal id is used once). Creating a basket or strategy is retried only when the
    request provably never reached the server (the connection could not be opened), so a
    lost answer can never create a second one. An answer cut short (the connection closed
    mid-body, a body that cannot be decoded, a success whose body is not JSON) is a lost answer
    too: the server did the work.

    When a repeat after a lost answer is refused because the first attempt did the work (a
    cancel finds the order cancelled, a modify finds it changed or filled), the call reads the
    order and returns it instead of raising.

Redirects
    A redirect (3xx) is never followed: it raises ``ApiError`` (code ``redirected``, the target in
    the message), so a placement is never turned into a GET by a 301/302 (e.g. a proxy sending
    http:// to https://) and read as done. Give ``base_url`` as the address the server is served at.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import random
import time as _time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError

from ._version import __version__
from .errors import ApiError, Conflict, NotFound, TransportError, error_from_response
from .models import (
    Account,
    AccountPage,
    Basket,
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
    from_json,
)

__all__ = ["Client"]

logger = logging.getLogger("tpclient")

RETRY_STATUSES = frozenset({500, 502, 503, 504})
# The longest wait a socket takes (``settimeout`` overflows a little above 9e9 s).
MAX_TIMEOUT = 10**9
API_PREFIX = "/api/v1"
# The most rows a list's page holds (its ``limit``), as the API takes it.
MAX_PAGE_SIZE = 500
# No whole answer: the request failed, timed out, or its answer was cut short or garbled on the way
# back (the server had answered, so it did the work). requests wraps urllib3's and http.client's
# errors; the last two are for any that come through unwrapped.
NO_ANSWER = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    ProtocolError,
    http.client.IncompleteRead,
)


@dataclass
class _Answer:
    status: int
    body: Any
    attempts: int
    # Whether an earlier attempt of this call may have been carried out (its answer was lost).
    after_lost_answer: bool = False


def _after_lost_answer(error: ApiError) -> bool:
    """Whether the call that raised ``error`` was a repeat of an attempt the server may have carried out."""
    return error.after_lost_answer


def _never_sent(error: Exception) -> bool:
    """Whether the request certainly did not reach the server (the connection was never opened)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)  # urllib3's MaxRetryError carries the real failure
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


def _shows_change(order: Order, changes: Mapping[str, Any]) -> bool:
    """Whether ``order`` holds every value a modify asked for (prices compared as Decimals)."""
    for name, wanted in changes.items():
        if name == "order_type" and wanted == "MARKET" and order.status == "FILLED":
            continue  # a change to MARKET fills at once: filled is what it was for
        have = getattr(order, name)
        if name in ("price", "trigger_price"):
            same = have is not None and Decimal(str(wanted)) == have
        else:
            same = have == wanted
        if not same:
            return False
    return True


def header_safe(value: str) -> bool:
    """Whether ``value`` can be sent as a header's value as it is: visible ASCII, inner spaces allowed.
    Anything else fails in ``requests`` (a traceback for a character outside Latin-1, or an error
    whose message shows the whole header) or reaches the server as another value."""
    return value.isascii() and value.isprintable() and value == value.strip()


def _jsonable(value: Any) -> Any:
    """Request bodies: Decimals as strings (exact), dates and times in ISO 8601."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _rows(cls: type, body: Any) -> list:
    """A list answer's rows; anything else (an object, nothing: a proxy's answer) is an ``ApiError``
    (code ``unexpected_answer``), as ``from_json`` says of an object, not a TypeError."""
    if not isinstance(body, list):
        shape = type(body).__name__ if body is not None else "nothing"
        raise ApiError(f"The server's answer is not a list of {cls.__name__} ({shape}).", code="unexpected_answer")
    return body


def _order_spec(item: OrderSpec | Mapping[str, Any]) -> dict:
    if isinstance(item, OrderSpec):
        item = {
            "exchange": item.exchange,
            "tradingsymbol": item.tradingsymbol,
            "side": item.side,
            "quantity": item.quantity,
            "order_type": item.order_type,
            "product": item.product,
            "validity": item.validity,
            "price": item.price,
            "trigger_price": item.trigger_price,
        }
    return {k: _jsonable(v) for k, v in dict(item).items() if v is not None}


class Client:
    """A client for the platform's JSON API.

    ``base_url`` is the server (``https://trade.example.com``) or the API root
    (``https://trade.example.com/api/v1``); ``api_key`` a key from the platform's API keys page.
    ``session`` may be a ``requests.Session`` of your own (proxies, certificates, adapters);
    the client's session is ``client.session``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_wait: float = 60,
        session: requests.Session | None = None,
    ):
        if not base_url:
            raise ValueError("base_url is required")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, not {base_url!r}")
        try:
            parts.hostname.encode("idna")  # as the connection encodes it: else a LocationParseError there
        except UnicodeError:
            raise ValueError(
                f"base_url's host {parts.hostname!r} has an empty part or one over 63 characters: {base_url!r}"
            ) from None
        api_key = (api_key or "").strip()  # a key read from a file may keep its line end
        if not api_key:
            raise ValueError("api_key is required")
        if not header_safe(api_key) or " " in api_key:
            # Never shown: it is a secret, and most of it is right.
            raise ValueError(
                "api_key has a character no API key has (a space, a quote, a non-ASCII letter): copy it again"
            )
        if not 0 < timeout <= MAX_TIMEOUT:  # NaN too: a socket takes none of these
            raise ValueError(f"timeout must be above 0 and at most {MAX_TIMEOUT} seconds, not {timeout!r}")
        root = base_url.rstrip("/")
        if not root.endswith(API_PREFIX):
            root += API_PREFIX
        self.base_url = root
        self.api_key = api_key
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.max_retry_wait = max(0.0, float(max_retry_wait))
        self.session = session or requests.Session()
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- Transport -------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            _time.sleep(seconds)

    def _backoff_delay(self, attempt: int) -> float:
        # At most ``max_retry_wait``, as a Retry-After is: doubling, a 10th retry would wait minutes.
        return min(self.backoff * (2 ** min(attempt, 64)), self.max_retry_wait) * random.uniform(0.5, 1.0)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotency_key: str | None = None,
        repeatable: bool | None = None,
    ) -> _Answer:
        """Send one API call, retrying as the module docstring says; raise an ApiError on an error answer.

        ``repeatable`` says whether the call may be sent again after the server may have
        carried it out (default: every method but POST, and any call with an idempotency key).
        """
        if repeatable is None:
            repeatable = method != "POST" or idempotency_key is not None
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": f"tpclient/{__version__} python-requests/{requests.__version__}",
        }
        if idempotency_key is not None:
            if not header_safe(idempotency_key):
                raise ValueError(
                    f"idempotency_key must be visible ASCII characters (spaces only inside), not {idempotency_key!r}"
                )
            headers["Idempotency-Key"] = idempotency_key
        url = self.base_url + path
        attempt = 0
        maybe_done = False  # an earlier attempt may have been carried out (its answer was lost)
        while True:
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=_jsonable(json) if json is not None else None,
                    headers=headers,
                    timeout=self.timeout,
                    # A redirect is answered, not followed: a 301/302/303 turns a POST into a GET
                    # (its body dropped), whose 200 would read as the placement's answer.
                    allow_redirects=False,
                )
            except NO_ANSWER as error:
                never_sent = _never_sent(error)
                if attempt < self.retries and (repeatable or never_sent):
                    maybe_done = maybe_done or not never_sent
                    delay = self._backoff_delay(attempt)
                    logger.warning(
                        "%s %s: %s; retry %d/%d in %.2fs", method, path, error, attempt + 1, self.retries, delay
                    )
                    attempt += 1
                    self._sleep(delay)
                    continue
                failure = TransportError(f"{method} {path} failed: {error}", sent=maybe_done or not never_sent)
                failure.attempts, failure.after_lost_answer = attempt + 1, maybe_done
                raise failure from error
            except requests.RequestException as error:  # a URL requests cannot send to, a bad header...
                failure = TransportError(f"{method} {path} could not be sent: {error}", sent=maybe_done)
                failure.attempts, failure.after_lost_answer = attempt + 1, maybe_done
                raise failure from error
            status = response.status_code
            if 300 <= status < 400:
                location = response.headers.get("Location") or "nowhere"
                response.close()
                error = ApiError(
                    f"{method} {path}: the server answered {status}, a redirect to {location}, which is not"
                    " followed (it may turn the request into another): give base_url as the address it points to",
                    status=status,
                    code="redirected",
                )
                error.attempts, error.after_lost_answer = attempt + 1, maybe_done
                raise error
            if status < 400:
                body = None
                if status != 204 and response.content:
                    try:
                        body = response.json()
                    except ValueError:
                        # The server answered success (it did the work) but its answer cannot be read
                        # (cut short where no length says so): a lost answer, as one cut short is.
                        if attempt < self.retries and repeatable:
                            delay = self._backoff_delay(attempt)
                            logger.warning(
                                "%s %s: HTTP %d answer is not JSON; retry %d/%d in %.2fs",
                                method,
                                path,
                                status,
                                attempt + 1,
                                self.retries,
                                delay,
                            )
                            response.close()
                            maybe_done = True
                            attempt += 1
                            self._sleep(delay)
                            continue
                        failure = TransportError(
                            f"{method} {path}: the server answered {status} but its answer is not JSON"
                            " (cut short?): it may have been carried out",
                            sent=True,
                        )
                        failure.attempts, failure.after_lost_answer = attempt + 1, maybe_done
                        raise failure from None
                return _Answer(status, body, attempt + 1, after_lost_answer=maybe_done)
            error = error_from_response(response)
            retry_after = getattr(error, "retry_after", None)  # a 429's or a 503's
            too_long = (retry_after or 0) > self.max_retry_wait
            if attempt < self.retries and not too_long and (status == 429 or (status in RETRY_STATUSES and repeatable)):
                if retry_after is not None:
                    delay = retry_after + random.uniform(0, 0.1)
                else:
                    delay = self._backoff_delay(attempt)
                logger.warning(
                    "%s %s: HTTP %d; retry %d/%d in %.2fs", method, path, status, attempt + 1, self.retries, delay
                )
                response.close()
                maybe_done = maybe_done or status != 429
                attempt += 1
                self._sleep(delay)
                continue
            error.attempts, error.after_lost_answer = attempt + 1, maybe_done
            raise error

    def _get(self, path: str, **params) -> Any:
        return self._request("GET", path, params={k: v for k, v in params.items() if v is not None}).body

    def _page(self, cls: type, path: str, *, limit: int, offset: int, before_id: int | None, **filters) -> Any:
        """One page of a list (``cls``: its page's dataclass), newest first by id."""
        return from_json(cls, self._get(path, limit=limit, offset=offset, before_id=before_id, **filters))

    # --- Me and accounts -------------------------------------------------------------------

    def me(self) -> Me:
        """The trader the API key belongs to."""
        return from_json(Me, self._get("/me"))

    def accounts(self) -> list[Account]:
        """Every broker account of yours, newest first (read page by page, as :meth:`iter_accounts` does)."""
        return list(self.iter_accounts())

    def accounts_page(self, limit: int = 50, offset: int = 0, before_id: int | None = None) -> AccountPage:
        """One page of your broker accounts, newest first by id. ``before_id``: only accounts with a lower
        id (the last id of a page, for the next)."""
        return self._page(AccountPage, "/accounts", limit=limit, offset=offset, before_id=before_id)

    def iter_accounts(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Account]:
        """Every broker account of yours, newest first, page by page (by ``before_id``, as
        :meth:`iter_orders`); at most ``limit`` of them, if given."""
        return self._pages(self.accounts_page, page_size, limit, filters)

    def account(self, id: int) -> Account:
        return from_json(Account, self._get(f"/accounts/{int(id)}"))

    # --- Instruments -----------------------------------------------------------------------

    def instruments(self, q: str = "", limit: int = 50) -> InstrumentPage:
        """Instruments whose symbol starts with ``q`` or whose name contains it (``truncated`` if there are more)."""
        body = self._get("/instruments", q=q, limit=limit)
        if not isinstance(body, dict) or "truncated" not in body or not isinstance(body.get("items"), list):
            # A proxy's answer (a list, its own object): said so, not a KeyError or TypeError.
            raise ApiError(
                f"The server's answer is not an InstrumentPage ({str(body)[:200]}).", code="unexpected_answer"
            )
        return InstrumentPage(
            truncated=bool(body["truncated"]), items=[from_json(Instrument, row) for row in body["items"]]
        )

    # --- Orders ----------------------------------------------------------------------------

    def orders(
        self,
        account_id: int | None = None,
        status: str | Iterable[str] | None = None,
        source: str | None = None,
        symbol: str | None = None,
        limit: int = 50,
        offset: int = 0,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> OrderPage:
        """One page of your orders, newest first (by id). ``status`` may be one status or several;
        ``"open"`` (lower case) stands for every order not final, ``"OPEN"`` for those resting at the broker.

        ``before_id``: only orders with a lower id; pass the last id of a page to get the next one
        (:meth:`iter_orders` does), which neither repeats nor skips orders placed or changed meanwhile.
        """
        statuses = [status] if isinstance(status, str) else list(status or [])
        params = {
            "account_id": account_id,
            "status": statuses or None,
            "source": source,
            "symbol": symbol,
            "since": since.isoformat() if since else None,
            "limit": limit,
            "offset": offset,
            "before_id": before_id,
        }
        body = self._get("/orders", **params)
        return from_json(OrderPage, body)

    def iter_orders(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Order]:
        """Every order matching the filters of :meth:`orders`, newest first, page by page
        (``page_size``, 1 to 500, a request); at most ``limit`` of them, if given.

        Each page after the first asks for the orders below the last one seen (``before_id``), not
        for an offset, so the loop may change what it lists: cancelling each order of
        ``iter_orders(status="open")`` reaches them all, and orders placed meanwhile repeat nothing.
        """
        return self._pages(self.orders, page_size, limit, filters)

    def _pages(self, read_page, page_size: int, limit: int | None, filters: dict) -> Iterator[Any]:
        """Every item of a list, ``limit`` at most, following its ``before_id`` cursor (the first
        page from ``offset``, if given)."""
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            # Else the server's refusal of the page's size names `limit`: the iterator's other argument.
            raise ValueError(
                f"page_size must be a whole number of at least 1 and at most {MAX_PAGE_SIZE}, not {page_size!r}"
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a whole number of at least 0 (or None: all), not {limit!r}")
        return self._walk(read_page, page_size, limit, filters)

    def _walk(self, read_page, page_size: int, limit: int | None, filters: dict) -> Iterator[Any]:
        offset = filters.pop("offset", 0)
        before_id = filters.pop("before_id", None)
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = read_page(limit=size, offset=offset, before_id=before_id, **filters)
            if before_id is not None and any(item.id >= before_id for item in page.items):
                # A server that ignores before_id would hand back the first page for ever.
                raise ApiError("The server does not page by before_id; upgrade it.", code="bad_response")
            items = page.items if left is None else page.items[:left]
            yield from items
            if left is not None:
                left -= len(items)
            if not page.items or not page.has_more:
                return
            before_id, offset = page.items[-1].id, 0

    def order(self, id: int) -> Order:
        return from_json(Order, self._get(f"/orders/{int(id)}"))

    def order_events(self, id: int) -> list[OrderEvent]:
        """What happened to the order, oldest first."""
        return [from_json(OrderEvent, row) for row in _rows(OrderEvent, self._get(f"/orders/{int(id)}/events"))]

    def place_order(
        self,
        account_id: int,
        tradingsymbol: str,
        side: str,
        quantity: int,
        order_type: str = "MARKET",
        product: str = "MIS",
        exchange: str = "NSE",
        price: Decimal | str | None = None,
        trigger_price: Decimal | str | None = None,
        validity: str = "DAY",
        idempotency_key: str | None = None,
    ) -> Order:
        """Place an order. Safe to retry: a repeat with the same ``idempotency_key`` returns the same order.

        Without a key the client makes one (uuid4) for this call, used by each of its retries.
        """
        payload = {
            "account_id": account_id,
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "side": side,
            "quantity": quantity,
            "order_type": order_type,
            "product": product,
            "validity": validity,
            "price": price,
            "trigger_price": trigger_price,
        }
        key = idempotency_key or str(uuid.uuid4())
        answer = self._request("POST", "/orders", json=payload, idempotency_key=key)
        return from_json(Order, answer.body)

    def modify_order(
        self,
        id: int,
        quantity: int | None = None,
        price: Decimal | str | None = None,
        trigger_price: Decimal | str | None = None,
        order_type: str | None = None,
    ) -> Order:
        """Change an open order; only the values given are sent.

        A repeat after a lost answer that is refused (Conflict) because the first attempt made the
        change and the order moved on (a change to MARKET fills at once) returns the order as it is.
        """
        payload = {"quantity": quantity, "price": price, "trigger_price": trigger_price, "order_type": order_type}
        changes = {k: v for k, v in payload.items() if v is not None}
        try:
            body = self._request("PATCH", f"/orders/{int(id)}", json=changes).body
        except Conflict as error:
            # Refused now, but an earlier attempt may have been carried out: then it is done, not refused.
            if _after_lost_answer(error):
                order = self.order(id)
                if _shows_change(order, changes):
                    return order
            raise
        return from_json(Order, body)

    def cancel_order(self, id: int) -> Order:
        """Cancel an open order (Conflict if it cannot be, e.g. it is filled)."""
        try:
            answer = self._request("POST", f"/orders/{int(id)}/cancel", repeatable=True)
        except Conflict as error:
            # An earlier attempt may have cancelled it and lost the answer: then it is done, not refused.
            if _after_lost_answer(error):
                order = self.order(id)
                if order.status == "CANCELLED":
                    return order
            raise
        return from_json(Order, answer.body)

    # --- Trades and positions --------------------------------------------------------------

    def trades(
        self,
        account_id: int | None = None,
        symbol: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        before_id: int | None = None,
    ) -> TradePage:
        """One page of your fills, newest first by id, as recorded (``since`` inclusive, ``until`` exclusive;
        aware times). ``before_id``: only fills with a lower id (the last id of a page, for the next)."""
        body = self._get(
            "/trades",
            account_id=account_id,
            symbol=symbol,
            since=since.isoformat() if since else None,
            until=until.isoformat() if until else None,
            limit=limit,
            offset=offset,
            before_id=before_id,
        )
        return from_json(TradePage, body)

    def iter_trades(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Trade]:
        """Every fill matching the filters of :meth:`trades`, newest first, page by page (by ``before_id``,
        so fills recorded meanwhile repeat nothing; ``page_size``, 1 to 500, a request); at most ``limit``
        of them, if given."""
        return self._pages(self.trades, page_size, limit, filters)

    def positions(self, account_id: int | None = None, open_only: bool = False) -> list[Position]:
        """Every position of yours with its FIFO PnL, newest first (by id; read page by page, as
        :meth:`iter_positions` does)."""
        return list(self.iter_positions(account_id=account_id, open_only=open_only))

    def positions_page(
        self,
        account_id: int | None = None,
        open_only: bool = False,
        limit: int = 50,
        offset: int = 0,
        before_id: int | None = None,
    ) -> PositionPage:
        """One page of your positions, newest first by id (the order they were first opened in; a position
        keeps its id as it changes). ``before_id``: only positions with a lower id."""
        return self._page(
            PositionPage,
            "/positions",
            account_id=account_id,
            open_only="true" if open_only else None,
            limit=limit,
            offset=offset,
            before_id=before_id,
        )

    def iter_positions(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Position]:
        """Every position matching the filters of :meth:`positions_page`, newest first, page by page (by
        ``before_id``); at most ``limit`` of them, if given."""
        return self._pages(self.positions_page, page_size, limit, filters)

    # --- Baskets ---------------------------------------------------------------------------

    def baskets(self) -> list[Basket]:
        """Every basket of yours, newest first (read page by page, as :meth:`iter_baskets` does)."""
        return list(self.iter_baskets())

    def baskets_page(self, limit: int = 50, offset: int = 0, before_id: int | None = None) -> BasketPage:
        """One page of your baskets, newest first by id. ``before_id``: only baskets with a lower id (the
        last id of a page, for the next)."""
        return self._page(BasketPage, "/baskets", limit=limit, offset=offset, before_id=before_id)

    def iter_baskets(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Basket]:
        """Every basket of yours, newest first, page by page (by ``before_id``: baskets created meanwhile
        repeat nothing); at most ``limit`` of them, if given."""
        return self._pages(self.baskets_page, page_size, limit, filters)

    def basket(self, id: int) -> Basket:
        return from_json(Basket, self._get(f"/baskets/{int(id)}"))

    def create_basket(
        self,
        name: str,
        items: Iterable[OrderSpec | Mapping[str, Any]],
        account_ids: Iterable[int] = (),
        idempotency_key: str | None = None,
    ) -> Basket:
        """Create a basket of orders (``items``: :class:`OrderSpec` or dicts with the same keys).

        Safe to retry: a repeat with the same ``idempotency_key`` (one is made when none is given)
        returns the basket the first call made, not "name taken" by it."""
        payload = {"name": name, "account_ids": list(account_ids), "items": [_order_spec(i) for i in items]}
        key = idempotency_key or str(uuid.uuid4())
        return from_json(Basket, self._request("POST", "/baskets", json=payload, idempotency_key=key).body)

    def update_basket(
        self,
        id: int,
        name: str | None = None,
        items: Iterable[OrderSpec | Mapping[str, Any]] | None = None,
        account_ids: Iterable[int] | None = None,
    ) -> Basket:
        """Change a basket's name, items (given, they replace them all) or accounts: only what is given is
        sent and changed; the rest stays as it is on the server, even if someone changed it meanwhile.

        Safe to retry (it sets values), so it is retried like a read.
        """
        payload: dict[str, Any] = {}
        if name is not None:
            payload["name"] = name
        if items is not None:
            payload["items"] = [_order_spec(i) for i in items]
        if account_ids is not None:
            payload["account_ids"] = list(account_ids)
        return from_json(Basket, self._request("PATCH", f"/baskets/{int(id)}", json=payload).body)

    def delete_basket(self, id: int) -> None:
        try:
            self._request("DELETE", f"/baskets/{int(id)}")
        except NotFound as error:
            if not _after_lost_answer(error):  # else an earlier attempt deleted it
                raise

    def place_basket(
        self, id: int, account_ids: Iterable[int] | None = None, idempotency_key: str | None = None
    ) -> list[Placement]:
        """Place every item on each account (the basket's own, or ``account_ids``); one result per order.

        Safe to retry like :meth:`place_order`: the same key returns the same orders.
        """
        payload = {"account_ids": list(account_ids) if account_ids is not None else None}
        key = idempotency_key or str(uuid.uuid4())
        answer = self._request("POST", f"/baskets/{int(id)}/place", json=payload, idempotency_key=key)
        return [from_json(Placement, row) for row in _rows(Placement, answer.body)]

    # --- Scheduled orders ------------------------------------------------------------------

    def scheduled(self) -> list[Scheduled]:
        """Every scheduled order of yours (cancelled and done ones too), newest first (read page by page,
        as :meth:`iter_scheduled` does)."""
        return list(self.iter_scheduled())

    def scheduled_page(self, limit: int = 50, offset: int = 0, before_id: int | None = None) -> ScheduledPage:
        """One page of your scheduled orders, newest first by id. ``before_id``: only those with a lower id
        (the last id of a page, for the next)."""
        return self._page(ScheduledPage, "/scheduled", limit=limit, offset=offset, before_id=before_id)

    def iter_scheduled(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Scheduled]:
        """Every scheduled order of yours, newest first, page by page (by ``before_id``: rows scheduled
        meanwhile repeat nothing); at most ``limit`` of them, if given."""
        return self._pages(self.scheduled_page, page_size, limit, filters)

    def scheduled_order(self, id: int) -> Scheduled:
        return from_json(Scheduled, self._get(f"/scheduled/{int(id)}"))

    def create_scheduled(
        self,
        account_id: int,
        tradingsymbol: str,
        side: str,
        quantity: int,
        time_of_day: time | str,
        *,
        recurrence: str = "once",
        run_on: date | str | None = None,
        weekdays: Iterable[int] = (),
        timezone: str | None = None,
        grace_s: int = 0,
        order_type: str = "MARKET",
        product: str = "MIS",
        exchange: str = "NSE",
        price: Decimal | str | None = None,
        trigger_price: Decimal | str | None = None,
        validity: str = "DAY",
        idempotency_key: str | None = None,
    ) -> Scheduled:
        """Schedule an order: ``recurrence`` is ``once`` (on ``run_on``), ``trading_days`` or ``weekdays``
        (0 = Monday ... 6 = Sunday); ``time_of_day`` is in ``timezone`` (default: yours).

        Safe to retry like :meth:`place_order`: the same key returns the same scheduled order.
        """
        payload = {
            "account_id": account_id,
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "side": side,
            "quantity": quantity,
            "order_type": order_type,
            "product": product,
            "validity": validity,
            "price": price,
            "trigger_price": trigger_price,
            "recurrence": recurrence,
            "run_on": run_on,
            "weekdays": list(weekdays),
            "time_of_day": time_of_day,
            "timezone": timezone,
            "grace_s": grace_s,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        key = idempotency_key or str(uuid.uuid4())
        return from_json(Scheduled, self._request("POST", "/scheduled", json=payload, idempotency_key=key).body)

    def update_scheduled(self, id: int, **changes: Any) -> Scheduled:
        """Change a scheduled order: ``changes`` are any of :meth:`create_scheduled`'s fields
        (``quantity``, ``price``, ``time_of_day``, ``run_on``, ``weekdays``, ``account_id``, ...); only
        they are sent and changed (``price=None`` clears the price, ``timezone=None`` makes it yours),
        the rest stays as it is on the server. The result is checked as a whole: an invalid change
        raises ``InvalidRequest`` naming the field and changes nothing.

        Safe to retry (it sets values), so it is retried like a read.
        """
        if "weekdays" in changes and changes["weekdays"] is not None:
            changes["weekdays"] = list(changes["weekdays"])
        return from_json(Scheduled, self._request("PATCH", f"/scheduled/{int(id)}", json=changes).body)

    def cancel_scheduled(self, id: int) -> Scheduled:
        """Cancel a scheduled order (it stays listed, as cancelled)."""
        return from_json(Scheduled, self._request("DELETE", f"/scheduled/{int(id)}").body)

    # --- Strategies ------------------------------------------------------------------------

    def strategies(self) -> list[Strategy]:
        """Every strategy of yours, newest first (read page by page, as :meth:`iter_strategies` does)."""
        return list(self.iter_strategies())

    def strategies_page(self, limit: int = 50, offset: int = 0, before_id: int | None = None) -> StrategyPage:
        """One page of your strategies, newest first by id. ``before_id``: only strategies with a lower id
        (the last id of a page, for the next)."""
        return self._page(StrategyPage, "/strategies", limit=limit, offset=offset, before_id=before_id)

    def iter_strategies(self, *, page_size: int = 100, limit: int | None = None, **filters) -> Iterator[Strategy]:
        """Every strategy of yours, newest first, page by page (by ``before_id``); at most ``limit`` of
        them, if given."""
        return self._pages(self.strategies_page, page_size, limit, filters)

    def strategy(self, id: int) -> Strategy:
        return from_json(Strategy, self._get(f"/strategies/{int(id)}"))

    def create_strategy(
        self, name: str, account_ids: Iterable[int] = (), idempotency_key: str | None = None, **params
    ) -> Strategy:
        """Create a strategy; ``params`` are its settings (``stop_loss``, ``take_profit``, ``max_retries``, ...).

        The returned strategy's ``webhook_secret`` is shown this once: keep it to sign webhook alerts.
        Safe to retry: a repeat with the same ``idempotency_key`` (one is made when none is given)
        returns the same strategy with a new secret, which replaces one whose answer was lost.
        """
        payload = {"name": name, "account_ids": list(account_ids), **params}
        key = idempotency_key or str(uuid.uuid4())
        return from_json(Strategy, self._request("POST", "/strategies", json=payload, idempotency_key=key).body)

    def update_strategy(self, id: int, name: str | None = None, account_ids: Iterable[int] | None = None, **params):
        """Change a strategy: only what is given is sent and changed (a setting given as None is cleared,
        e.g. ``stop_loss=None``); the rest stays as it is on the server, even if someone changed it meanwhile.

        Safe to retry (it sets values), so it is retried like a read.
        """
        payload = dict(params)
        if name is not None:
            payload["name"] = name
        if account_ids is not None:
            payload["account_ids"] = list(account_ids)
        return from_json(Strategy, self._request("PATCH", f"/strategies/{int(id)}", json=payload).body)

    def delete_strategy(self, id: int) -> None:
        """Delete a strategy that has no orders (Conflict otherwise: pause it with ``is_active=False``)."""
        try:
            self._request("DELETE", f"/strategies/{int(id)}")
        except NotFound as error:
            if not _after_lost_answer(error):  # else an earlier attempt deleted it
                raise

    def rotate_strategy_secret(self, id: int) -> Strategy:
        """Make a new webhook secret (the old one stops working); it is in the answer's ``webhook_secret``."""
        return from_json(Strategy, self._request("POST", f"/strategies/{int(id)}/secret").body)

    def signal(
        self,
        strategy_id: int,
        signal_id: str,
        tradingsymbol: str,
        side: str,
        quantity: int,
        exchange: str = "NSE",
        order_type: str = "MARKET",
        product: str = "MIS",
        price: Decimal | str | None = None,
        trigger_price: Decimal | str | None = None,
    ) -> SignalResult:
        """Send a strategy an entry signal; it places the order on each of the strategy's accounts.

        ``signal_id`` is unique per strategy: a repeat places nothing and returns the first results
        (``replayed`` is then True), so this call is safe to retry.

        When an attempt's answer was lost and the client's own retry is answered "replayed", the
        orders are this call's: its earlier attempt placed them. The result then says
        ``after_lost_answer`` and not ``replayed`` (which is kept for an earlier call with the same id).
        A retry answered with orders placed by it says neither: the earlier attempt did nothing.
        """
        payload = {
            "id": signal_id,
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "side": side,
            "quantity": quantity,
            "order_type": order_type,
            "product": product,
            "price": price,
            "trigger_price": trigger_price,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        path = f"/strategies/{int(strategy_id)}/signal"
        answer = self._request("POST", path, json=payload, repeatable=True)
        result = from_json(SignalResult, answer.body)
        if answer.after_lost_answer and result.replayed:
            # The repeat found the orders placed: by this call's earlier attempt, whose answer was lost.
            # (Answered as placed now, the earlier attempt did nothing: this attempt placed them.)
            result = dataclasses.replace(result, replayed=False, after_lost_answer=True)
        return result
