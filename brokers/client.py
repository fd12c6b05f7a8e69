"""``AccountBroker``: how the platform talks to a broker for one account.

It wraps the account's adapter with what every broker needs the same way:
- a live session from the session manager, renewed once when a call fails with
  ``AuthError`` (under the account's login lock);
- the account's shared rate budget per call kind (orders, quotes, other), waiting for
  a slot or failing with ``RateLimited`` as the caller chooses;
- retries with exponential backoff and jitter for transient errors only; and
- never a blind retry of an order placement whose outcome is unknown: after a timeout
  the order is looked up by its tag first, and sent again only if the broker does not
  have it.
"""

import logging
import random
import time
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings

from accounts.models import BrokerAccount
from tradingplatform import metrics

from . import ratelimit, registry, services
from .base import Broker, BrokerOrder, OrderChange, OrderRequest, PlacedOrder, Quote
from .errors import (
    AuthError,
    BrokerError,
    BrokerUnavailable,
    NetworkError,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    SendTooLate,
)

logger = logging.getLogger(__name__)

# ``AccountBroker.place_together``'s answer for an order left to be sent alone, its budget taken.
BUDGET_TAKEN = object()

ORDER_CALLS = "orders"
QUOTE_CALLS = "quote"
OTHER_CALLS = "other"


def backoff_delay(attempt: int, *, base_s: float = 0.2, cap_s: float = 5.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap_s, base_s * (2**attempt)))


def _in_time(send_by: float | None) -> None:
    if send_by is not None and time.time() > send_by:
        raise SendTooLate(f"not sent: its time to be sent ran out {time.time() - send_by:.1f} s ago")


class AccountBroker:
    def __init__(
        self,
        account: BrokerAccount,
        *,
        wait_for_budget: bool = True,
        budget_timeout_s: float = 10.0,
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        session: services.LiveSession | None = None,
    ):
        self.account = account
        self.wait_for_budget = wait_for_budget
        self.budget_timeout_s = budget_timeout_s
        self.attempts = attempts
        self.sleep = sleep
        self._session = session  # a live session already at hand (e.g. from sessions_live), else looked up
        self._adapter: Broker | None = None
        self.budget_wait_s = 0.0
        self.calls_made = 0  # broker calls actually made (not those stopped before: a login, the budget)

    # --- plumbing ---------------------------------------------------------------------
    def _broker(self) -> Broker:
        if self._adapter is None:
            self._session = self._session or services.session_live(self.account)
            self._adapter = services.adapter_for(self.account, self._session.access_token)
        return self._adapter

    def _renew_session(self, error: AuthError) -> None:
        failed = self._session.session_id if self._session else None
        self._session = services.session_renew(self.account, failed_session_id=failed, error=str(error))
        self._adapter = services.adapter_for(self.account, self._session.access_token)

    def _too_long(self, error: BaseException) -> bool:
        """A broker's wait (its 429's Retry-After) longer than this caller waits for a budget: not
        slept through in a request or a cycle, the refusal is the answer."""
        return getattr(error, "retry_after", 0) > self.budget_timeout_s

    def _limits(self, kind: str) -> list[tuple[int, float]]:
        return ratelimit.limits_for(self.account.broker, kind, registry.get(self.account.broker).rate_limits)

    def _take_budget(self, kind: str, send_by: float | None = None) -> None:
        """A slot for one call. With ``send_by``, a call not to be made after then neither waits for
        a slot that frees later nor takes one: ``SendTooLate`` (the slot is left to the next call)."""
        limits = self._limits(kind)
        timeout_s = self.budget_timeout_s
        if send_by is not None:
            _in_time(send_by)
            timeout_s = min(timeout_s, send_by - time.time())
        options = {"wait": self.wait_for_budget, "timeout_s": timeout_s}
        try:
            if self._session is None and self._adapter is None and self.account.is_active:
                # The first call: its slot and the cached session in one round trip.
                session, waited = services.session_cached_taking(self.account, kind, limits, **options)
                self._session = session
                if waited is not None:
                    self.budget_wait_s += waited
                    return
            self._broker()  # the session first: an account to reconnect takes no slot
            self.budget_wait_s += ratelimit.acquire(self.account.pk, self.account.broker, kind, limits, **options)
        except RateLimited as error:
            # Only a wait this caller would have made (and retried after) is cut by ``send_by``; a
            # longer one is the budget's refusal, as without a deadline (``_too_long``).
            if send_by is not None and not self._too_long(error) and time.time() + error.retry_after > send_by:
                raise SendTooLate(
                    f"not sent: its time to be sent ran out before the rate budget had a slot for it"
                    f" (in {error.retry_after:.1f} s)"
                ) from error
            raise

    def _call(self, call, method: str, args, send_by: float | None):
        _in_time(send_by)
        self.calls_made += 1
        with metrics.broker_call(self.account, method, args):
            return call(*args)

    def _once(
        self,
        kind: str,
        method: str,
        *args,
        budget_taken: bool = False,
        failed: AuthError | None = None,
        send_by: float | None = None,
    ):
        """One call with the budget taken (``budget_taken``: already), renewing the session once on
        AuthError (``failed``: the call already failed so, sent with other accounts' calls). With
        ``send_by`` (a ``time.time()``), it is not made after then: ``SendTooLate``."""
        if failed is None:
            if not budget_taken:
                self._take_budget(kind, send_by)
            try:
                return self._call(getattr(self._broker(), method), method, args, send_by)
            except AuthError as error:
                failed = error
        self._renew_session(failed)
        self._take_budget(kind, send_by)
        return self._call(getattr(self._broker(), method), method, args, send_by)

    def _read(self, kind: str, method: str, *args):
        """A call with no side effect: transient errors are retried with backoff."""
        for attempt in range(self.attempts):
            try:
                return self._once(kind, method, *args)
            except (NetworkError, RateLimited) as error:
                if attempt == self.attempts - 1 or self._too_long(error):
                    raise
                self.sleep(max(backoff_delay(attempt), getattr(error, "retry_after", 0)))
        raise AssertionError("unreachable")

    # --- orders -----------------------------------------------------------------------
    def place_order(self, request: OrderRequest, *, first=None, send_by: float | None = None) -> PlacedOrder:
        """Place once. A lost answer is resolved by tag before the order is ever sent again.

        ``send_by``: a ``time.time()`` after which the order is not sent (nor sent again): a
        ``SendTooLate`` instead, for a caller that takes an order not sent by then for one that
        never will be.

        Raises ``OutcomeUnknown`` when the broker cannot be asked whether it has the order, or
        does not have it yet after a timeout (the request may still arrive): the caller records
        that and reconciles later by the same tag. Only after ``BrokerUnavailable`` (the broker
        refused the call) is an order it does not have sent again; the last one is raised. A
        ``NetworkError`` before the order was sent (its session's login) is tried again as it is,
        and raised as it is at the last attempt: the broker does not have the order.

        ``first``: what ``place_together`` answered for it: what its first call answered (a
        ``PlacedOrder``) or raised, from which the rest goes on, or ``BUDGET_TAKEN`` (its first call
        is still to be made, its budget taken).
        """
        if not request.tag:
            raise ValueError("an order needs a tag to be placed safely")
        for attempt in range(self.attempts):
            made = self.calls_made
            try:
                if attempt == 0 and first is BUDGET_TAKEN:
                    return self._once(ORDER_CALLS, "place_order", request, budget_taken=True, send_by=send_by)
                if attempt == 0 and isinstance(first, AuthError):
                    return self._once(ORDER_CALLS, "place_order", request, failed=first, send_by=send_by)
                if attempt == 0 and first is not None:
                    if isinstance(first, BaseException):
                        raise first
                    return first
                return self._once(ORDER_CALLS, "place_order", request, send_by=send_by)
            except RateLimited as error:
                # Refused before processing: safe to send again after the wait.
                if attempt == self.attempts - 1 or self._too_long(error):
                    raise
                self.sleep(max(backoff_delay(attempt), error.retry_after))
            except NetworkError as error:
                sent_together = attempt == 0 and isinstance(first, NetworkError)
                if self.calls_made == made and not sent_together:
                    # Stopped before the order was sent (its session's login timed out, or the login
                    # lock stayed busy): the broker cannot have it, so it is no lost answer to look
                    # up by tag, and trying again is safe.
                    if attempt == self.attempts - 1:
                        raise
                    self.sleep(backoff_delay(attempt))
                    continue
                self.sleep(settings.ORDER_LOOKUP_DELAY_S)
                try:
                    found = self.find_by_tag(request.tag)
                except BrokerError as lookup_error:
                    # Whatever stopped the look (the network, the budget, a session that ended
                    # meanwhile and needs the trader), the order may be at the broker: never a
                    # refusal or a failure, which say it is not.
                    raise OutcomeUnknown(
                        f"placing {request.tag} failed ({error}) and the broker could not be asked whether it has it"
                        f" ({lookup_error})"
                    ) from lookup_error
                if found is not None:
                    logger.info("order %s found by tag after a lost answer", request.tag)
                    # With its state: the broker may have filled or rejected it already, and that
                    # is the answer (not "submitted" until a later update or sync says so).
                    return PlacedOrder(broker_order_id=found.broker_order_id, state=found, found_by_tag=True)
                if not isinstance(error, BrokerUnavailable):
                    # A timeout or a dropped connection: the request may still be on its way in,
                    # so "not there yet" proves nothing, and sending it again could place it twice
                    # (e2e/faults.py did, through the Kite face). Reconcile by tag instead.
                    raise OutcomeUnknown(
                        f"placing {request.tag} failed ({error}); the broker does not have it yet, it may still arrive"
                    ) from error
                if attempt == self.attempts - 1:
                    raise
                self.sleep(backoff_delay(attempt))
        raise AssertionError("unreachable")

    def places_together(self) -> bool:
        """Whether ``place_together`` sends this account's orders with others: its adapter can, and
        its session is at hand (an account to log in, waiting for its login lock, is sent alone on
        its own thread, not before the others)."""
        has_session = self._session is not None or self._adapter is not None
        return has_session and hasattr(registry.get(self.account.broker), "place_together")

    @staticmethod
    def place_together(calls: list[tuple["AccountBroker", OrderRequest]]) -> list:
        """The first calls of several accounts' placements, sent at once where their adapter can
        take them together (``place_together``: the paper exchange's, in one transaction). Each
        account's rate budget is taken as for its own call, without waiting for it. For each: what
        its first call answered or raised, to go on from with ``place_order(request, first=...)``
        (an ``AuthError``: the session is renewed and the order sent, once), ``BUDGET_TAKEN`` where
        the adapter left it to be sent alone (an exchange client with call knobs), or None where it
        was not sent (an adapter that cannot, no live session at hand, no budget left at once)."""
        results: list = [None] * len(calls)
        together: dict[type, list[tuple[int, AccountBroker, Broker, OrderRequest]]] = {}
        for index, (broker, request) in enumerate(calls):
            try:
                if not broker.places_together() or not request.tag:
                    continue
                adapter = broker._broker()
                # No waiting here: an account out of budget would hold back every other one's order.
                account = broker.account
                if ratelimit.take(account.pk, account.broker, ORDER_CALLS, broker._limits(ORDER_CALLS)) > 0:
                    continue
            except Exception:  # placed alone, which meets the same error where it handles it
                logger.debug("%s: not placed together", request.tag, exc_info=True)
                continue
            together.setdefault(type(adapter), []).append((index, broker, adapter, request))
        for adapter_type, group in together.items():
            started = time.perf_counter()
            answers = adapter_type.place_together([(adapter, request) for _i, _b, adapter, request in group])
            elapsed = time.perf_counter() - started
            for (index, broker, _adapter, request), answer in zip(group, answers, strict=True):
                if answer is not None:
                    outcome = type(answer).__name__ if isinstance(answer, BaseException) else "ok"
                    metrics.broker_call_done(broker.account, "place_order", (request,), outcome, elapsed)
                results[index] = BUDGET_TAKEN if answer is None else answer
        return results

    def modify_order(self, broker_order_id: str, change: OrderChange) -> None:
        return self._change("modify_order", broker_order_id, change)

    def cancel_order(self, broker_order_id: str) -> None:
        return self._change("cancel_order", broker_order_id)

    def _change(self, method: str, *args) -> None:
        """A modify or cancel, sent once, unless the broker turned it away before it took it: a
        ``RateLimited`` or a ``BrokerUnavailable`` (a change whose answer may be lost is a plain
        ``NetworkError``, as a Kite 5xx to one is) did nothing, so it is sent again after the wait, as
        ``place_order`` sends an order again, and the last one is raised. A ``NetworkError`` from
        before it was sent (its session's login timed out, or the login lock stayed busy) is no lost
        answer (the broker may have done it): the broker cannot have it, ``NotSent``, as
        ``place_order`` tells the two apart."""
        for attempt in range(self.attempts):
            made = self.calls_made
            try:
                return self._once(ORDER_CALLS, method, *args)
            except RateLimited as error:
                if attempt == self.attempts - 1 or self._too_long(error):
                    raise
                self.sleep(max(backoff_delay(attempt), error.retry_after))
            except BrokerUnavailable as error:
                if self.calls_made == made:
                    raise NotSent(f"not sent: {error}") from error
                if attempt == self.attempts - 1:
                    raise
                self.sleep(backoff_delay(attempt))
            except NetworkError as error:
                if self.calls_made == made:
                    raise NotSent(f"not sent: {error}") from error
                raise
        raise AssertionError("unreachable")

    # --- reads ------------------------------------------------------------------------
    def find_by_tag(self, tag: str) -> BrokerOrder | None:
        return self._read(OTHER_CALLS, "find_by_tag", tag)

    def orders(self):
        return self._read(OTHER_CALLS, "orders")

    def order(self, broker_order_id: str):
        return self._read(OTHER_CALLS, "order", broker_order_id)

    def order_trades(self, broker_order_id: str):
        return self._read(OTHER_CALLS, "order_trades", broker_order_id)

    def trades(self):
        return self._read(OTHER_CALLS, "trades")

    def positions(self):
        return self._read(OTHER_CALLS, "positions")

    def holdings(self):
        return self._read(OTHER_CALLS, "holdings")

    def margins(self):
        return self._read(OTHER_CALLS, "margins")

    def quote(self, instruments) -> dict[str, Quote]:
        return self._read(QUOTE_CALLS, "quote", list(instruments))

    def ltp(self, instruments) -> dict[str, Decimal]:
        return self._read(QUOTE_CALLS, "ltp", list(instruments))

    def instruments(self, exchange: str | None = None):
        return self._read(OTHER_CALLS, "instruments", exchange)
