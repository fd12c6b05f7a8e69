"""Positions against the broker's book: differences the platform's fills do not explain.

The platform keeps an account's positions from the fills it records (and its opening,
``portfolio.openings``). A broker lists only today's fills (Kite), so fills on a day no run read
(the trader traded in the broker's own app while the platform's session had expired), a
contract's expiry or settlement, or a corporate action change the broker's book without a fill
the platform ever records: the position and its PnL are then wrong, without a word. Each
monitoring run compares them, per instrument and product:

* Delivery (CNC): the broker's holdings (what the day opened with: ``portfolio.openings`` says
  how they are read) plus the net of today's delivery trading in its positions; per symbol
  across NSE and BSE, since the broker lists a holding under one exchange whichever it was
  bought on (and it can be sold on the other).
* Every other product: the net quantity of the broker's positions (carried in plus today's).

An instrument is reported only where its total across products differs (an equity's on NSE and
BSE together): a position converted at the broker (Kite's MIS to CNC, NRML to MIS) is listed
under its new product while the fills the platform recorded keep the one they were placed with.

A difference is reported only once it has been seen the same on two runs at least
``CONFIRM_S`` apart: the broker's fill list can lag its positions (a fill counted in one and not
listed in the other yet), and the fill fast path records fills between a run's reads. A
difference that changes starts over. What is reported is what a trader can act on: the two
quantities, and that the platform's PnL for it is not the broker's until it is put right.

Left out: instruments not loaded and exchanges whose quantities are lots of a multiplier (their
fills are not recorded, and each run already says so), row by row (a holding the broker lists
under BSE while only NSE is loaded is an opening lot waiting, not a difference), and accounts whose opening is not taken
(the next run takes it; until then the difference is the opening's).
"""

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache

from brokers.base import MULTIPLIED_EXCHANGES, BrokerPosition, Holding
from brokers.selectors import instrument_by_symbol

from .models import Opening, Position

logger = logging.getLogger(__name__)

CONFIRM_S = 45
# Long enough to outlive a few missed cycles; a difference unseen for this long starts over.
SEEN_TTL_S = 3600
DELIVERY = "CNC"
# Exchanges one equity trades on under the same symbol: a holding of either is one delivery position.
EQUITY_EXCHANGES = ("NSE", "BSE")


@dataclass(frozen=True)
class Difference:
    exchange: str  # "NSE/BSE" for delivery on either
    tradingsymbol: str
    product: str
    platform: int
    broker: int

    @property
    def key(self) -> str:
        return f"{self.exchange}:{self.tradingsymbol}:{self.product}"

    def __str__(self) -> str:
        return (
            f"position {self.exchange}:{self.tradingsymbol} {self.product} is {self.platform} here and"
            f" {self.broker} at the broker: the broker's book holds what the platform's fills do not"
            " (trades made while it could not read the account or before it first did, an opening it"
            " could not price, an expiry or settlement, a corporate action), so its PnL here leaves that out"
        )


def _key(exchange: str, tradingsymbol: str, product: str) -> tuple[str, str, str]:
    if product == DELIVERY and exchange in EQUITY_EXCHANGES:
        exchange = "/".join(EQUITY_EXCHANGES)
    return (exchange, tradingsymbol, product)


def _instrument(key: tuple[str, str, str]) -> tuple[str, str]:
    """The instrument a key is of, whatever its product: an equity on NSE or BSE is one."""
    exchange, symbol, _product = key
    either = "/".join(EQUITY_EXCHANGES)
    return (either if exchange in (*EQUITY_EXCHANGES, either) else exchange, symbol)


def _recorded(exchange: str, tradingsymbol: str) -> bool:
    """Whether the platform records fills of this instrument (and so an opening lot of it)."""
    return exchange not in MULTIPLIED_EXCHANGES and instrument_by_symbol(exchange, tradingsymbol) is not None


def differences(
    *, held: Iterable[tuple[str, str, str, int]], positions: list[BrokerPosition], holdings: list[Holding] | None
) -> list[Difference]:
    """Where the platform's net quantities (``held``: exchange, symbol, product, net quantity) are
    not the broker's book. ``holdings`` None: they could not be read, so delivery is not compared."""
    mine, theirs = defaultdict(int), defaultdict(int)
    # Rows of an instrument the platform does not record are left out row by row: a holding listed
    # under BSE while only NSE is loaded waits as an opening lot (and its runs say so), though the
    # same symbol's delivery on NSE is compared.
    for exchange, symbol, product, quantity in held:
        if _recorded(exchange, symbol):
            mine[_key(exchange, symbol, product)] += quantity
    for p in positions:
        if _recorded(p.exchange, p.tradingsymbol):
            theirs[_key(p.exchange, p.tradingsymbol, p.product)] += p.quantity
    for h in holdings or []:
        if _recorded(h.exchange, h.tradingsymbol):
            theirs[_key(h.exchange, h.tradingsymbol, DELIVERY)] += h.quantity
    keys = set(mine) | set(theirs)
    # A position the broker moved to another product (Kite's position conversion: MIS to CNC,
    # NRML to MIS) is listed under the new one, while its fills, recorded once, stay under the
    # product they were placed with: only a difference in the instrument's total across its
    # products is one. Without the holdings, an equity with any delivery is not compared at all
    # (its total is not known).
    unknown = {_instrument(key) for key in keys if key[2] == DELIVERY and holdings is None}
    total_mine, total_theirs = defaultdict(int), defaultdict(int)
    for key in keys:
        total_mine[_instrument(key)] += mine[key]
        total_theirs[_instrument(key)] += theirs[key]
    return [
        Difference(*key, platform=mine[key], broker=theirs[key])
        for key in sorted(keys)
        if mine[key] != theirs[key]
        and _instrument(key) not in unknown
        and total_mine[_instrument(key)] != total_theirs[_instrument(key)]
    ]


def held_by(account_ids: list[int]) -> dict[int, list[tuple[str, str, str, int]]]:
    """The platform's open positions of the accounts whose opening is taken (one query each):
    (exchange, symbol, product, net quantity) by account id. The others are not compared."""
    opened = Opening.objects.filter(account_id__in=account_ids).exclude(outcome=Opening.Outcome.PENDING)
    held = {account_id: [] for account_id in opened.values_list("account_id", flat=True)}
    rows = Position.objects.filter(account_id__in=list(held)).exclude(net_quantity=0)
    for account_id, *row in rows.values_list(
        "account_id", "instrument__exchange", "instrument__tradingsymbol", "product", "net_quantity"
    ):
        held[account_id].append(tuple(row))
    return held


def _seen_key(account_id: int) -> str:
    return f"positions-differ:{account_id}"


def confirmed(found: dict[int, list[Difference]], *, now: float | None = None) -> dict[int, list[Difference]]:
    """The differences of each account seen the same on an earlier run, first at least ``CONFIRM_S``
    before ``now`` (seconds since the epoch); the others are remembered as seen now. An account's
    differences gone are forgotten. Without the cache, nothing is confirmed (logged)."""
    now = time.time() if now is None else now
    try:
        seen = cache.get_many([_seen_key(account_id) for account_id in found])
    except Exception as error:
        logger.warning("positions not compared with the broker: the cache is unavailable: %s", error)
        return {}
    result, remember = {}, {}
    for account_id, diffs in found.items():
        before = seen.get(_seen_key(account_id)) or {}
        now_seen = {}
        for diff in diffs:
            value = [diff.platform, diff.broker]
            earlier = before.get(diff.key)
            again = bool(earlier) and earlier[:2] == value
            since = earlier[2] if again else now
            now_seen[diff.key] = [*value, since]
            if again and now - since >= CONFIRM_S:
                result.setdefault(account_id, []).append(diff)
        if now_seen or before:
            remember[_seen_key(account_id)] = now_seen
    try:
        cache.set_many(remember, timeout=SEEN_TTL_S)
    except Exception as error:
        logger.warning("positions compared with the broker not remembered: the cache is unavailable: %s", error)
    return result
