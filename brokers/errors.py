"""Typed broker errors. Callers decide whether to retry from the type, never from a message.

``permanent`` says whether the same call can succeed later: transient errors (network,
broker unavailable, rate limited) may be retried; permanent ones must not be.
"""

import re


class BrokerError(Exception):
    permanent = True

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class AuthError(BrokerError):
    """The session is gone (expired, revoked, logged out): log in again, then retry once."""

    permanent = False


class RateLimited(BrokerError):
    """Over the account's rate budget (ours or the broker's). Retry after ``retry_after`` seconds."""

    permanent = False

    def __init__(self, message: str = "rate limited", *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class NetworkError(BrokerError):
    """The call may not have reached the broker, or its answer was lost (timeout).

    For an order placement the outcome is unknown: look the order up by its tag before
    any retry.
    """

    permanent = False


class OutcomeUnknown(NetworkError):
    """An order's placement may or may not have happened and the broker cannot be asked now.

    Record it as unknown and resolve it later by its tag; never send it again blindly.
    """


class BrokerUnavailable(NetworkError):
    """The broker answered with a server error (5xx) or said it is down."""


class SendTooLate(BrokerError):
    """An order was not sent: its deadline (``AccountBroker.place_order``'s ``send_by``) passed
    while it waited for the rate budget, a session or a retry. The broker does not have it."""

    permanent = False


class NotSent(BrokerError):
    """A modify or cancel stopped before it was sent (its session's login timed out, or the login
    lock stayed busy): the broker did not get it, so it is not done (no lost answer)."""

    permanent = False


class InputError(BrokerError):
    """The request itself is wrong (unknown parameter, bad value). Fix it; do not retry."""


class OrderNotFound(InputError):
    """No such order at the broker (for this account)."""


class OrderRejected(BrokerError):
    """The broker refused the order. ``kind`` is one of ``RejectKind``.

    ``broker_order_id`` is set when the broker created the order before rejecting it.
    """

    def __init__(self, kind: str, message: str, *, broker_order_id: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.broker_order_id = broker_order_id

    def __str__(self):
        return f"{self.kind}: {self.message}"


class RejectKind:
    """Why an order was refused: the retry policy of a strategy names these."""

    FUNDS = "funds"
    PRICE_BAND = "price_band"
    TICK_SIZE = "tick_size"
    LOT_SIZE = "lot_size"
    INSTRUMENT = "instrument"
    MODIFICATION_CAP = "modification_cap"
    RMS = "rms"
    RATE_LIMIT = "rate_limit"
    NETWORK = "network"
    BROKER_ERROR = "broker_error"
    INPUT = "input"
    MARKET_CLOSED = "market_closed"
    OTHER = "other"

    ALL = (
        FUNDS,
        PRICE_BAND,
        TICK_SIZE,
        LOT_SIZE,
        INSTRUMENT,
        MODIFICATION_CAP,
        RMS,
        RATE_LIMIT,
        NETWORK,
        BROKER_ERROR,
        INPUT,
        MARKET_CLOSED,
        OTHER,
    )
    # Kinds that can succeed if the same order is sent again later. Not MARKET_CLOSED: an entry
    # refused outside market hours is not placed hours later unasked (a strategy may choose it).
    RETRYABLE_BY_NATURE = (FUNDS, RMS, RATE_LIMIT, NETWORK, BROKER_ERROR)


def classify_rejection(message: str | None) -> str:
    """The kind of a rejection from a broker's message (Kite's wording, which the paper exchange shares)."""
    text = (message or "").lower()
    rules = (
        (("insufficient funds", "margin exceeds", "insufficient margin"), RejectKind.FUNDS),
        (("price band", "circuit limit", "outside the price"), RejectKind.PRICE_BAND),
        (("tick size",), RejectKind.TICK_SIZE),
        (("lot size", "multiple of the lot"), RejectKind.LOT_SIZE),
        (("modifications", "modification limit"), RejectKind.MODIFICATION_CAP),
        (("invalid `tradingsymbol`", "instrument"), RejectKind.INSTRUMENT),
        (("too many requests", "rate limit"), RejectKind.RATE_LIMIT),
        (("markets are closed", "market is closed", "outside market hours"), RejectKind.MARKET_CLOSED),
    )
    for needles, kind in rules:
        if any(needle in text for needle in needles):
            return kind
    # The word only: "terms", "norms" or "platforms" are not the broker's risk check (which is retried).
    if re.search(r"\brms\b", text):
        return RejectKind.RMS
    return RejectKind.OTHER
