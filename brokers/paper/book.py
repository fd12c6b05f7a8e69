"""The in-memory order book of the paper (simulated) exchange, one instrument per book.

This module owns the resting LIMIT orders and the pending stop orders (SL and SL-M) of one
instrument, kept in price-time priority, and the rules that decide which of them a market
tick fills or triggers. It knows nothing about accounts, money, persistence or Django.

The paper exchange does not match client orders against each other: it matches them
against a simulated market. A tick (``match``) carries the market's bid, ask and traded
volume; resting buys at or above the ask and resting sells at or below the bid fill at
their own limit price, best price first, then earliest first, until the tick's volume for
that side runs out. ``trigger`` turns stops into orders when the last traded price reaches
their trigger; the caller decides what happens next (usually ``add_limit`` for SL, a fill
at market for SL-M).

Prices are integers in paise (1 rupee = 100 paise) and quantities are integers (shares),
so the hot path does no Decimal arithmetic; the caller converts Decimal <-> paise.

Layout, chosen for speed:

* Four "places" an order can be in, numbered: 0 resting bids, 1 resting asks, 2 pending
  buy stops, 3 pending sell stops (so ``place & 1`` is SELL and ``place >= 2`` is a stop).
* Each place has a dict ``key -> level`` and a list of the keys in use, kept sorted
  ascending with ``bisect``. A level is a dict ``order_id -> remaining quantity`` whose
  insertion order is time priority. Empty levels are removed at once.
* Keys are signed so that the one to serve first is always at the same end of the list:
  for limits ``key = price`` (BUY) or ``-price`` (SELL) and the best level is
  ``keys[-1]``; for stops ``key = trigger`` (BUY) or ``-trigger`` (SELL) and the next
  level to trigger is ``keys[0]``.
* ``_orders`` maps ``order_id -> key * 4 + place`` (one int: ``code >> 2`` is the key,
  ``code & 3`` the place), which gives O(1) cancel, modify and lookup. Stops also have
  ``_stops[order_id] = (limit_price_or_None, seq)``, ``seq`` ordering them in time across
  trigger levels.

Adding, cancelling and modifying a limit order creates nothing that the cyclic garbage
collector tracks: ``_orders`` and the levels hold only strs and ints (CPython leaves such
dicts untracked), and a new level is one such dict. So collections seldom start in the hot
path and never have to scan the book's contents. ``match`` allocates the Fills it returns.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass
from operator import itemgetter

BUY = "BUY"
SELL = "SELL"

__all__ = ["BUY", "SELL", "Fill", "OrderBook"]


@dataclass(slots=True, frozen=True)
class Fill:
    order_id: str
    side: str  # BUY or SELL
    price: int  # paise
    quantity: int


# ``match`` builds many Fills. The dataclass ``__init__`` of a frozen class goes through
# ``object.__setattr__`` for each field; writing the slots through their descriptors, as
# ``_match_side`` does, gives an equal object at about half the cost.
_new_object = object.__new__
_set_order_id = Fill.order_id.__set__
_set_side = Fill.side.__set__
_set_price = Fill.price.__set__
_set_quantity = Fill.quantity.__set__

_BIDS, _ASKS, _BUY_STOPS, _SELL_STOPS = 0, 1, 2, 3
_SIDE_OF_PLACE = (BUY, SELL, BUY, SELL)
_second = itemgetter(1)


def _check_positive_int(name: str, value) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int (paise / shares), not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _bad_side(side) -> ValueError:
    return ValueError(f"side must be {BUY!r} or {SELL!r}, got {side!r}")


class OrderBook:
    """Resting LIMIT orders and pending stop (SL / SL-M) orders of ONE instrument, in price-time priority."""

    __slots__ = (
        "_orders",
        "_stops",
        "_levels",
        "_keys",
        "_bid_levels",
        "_bid_keys",
        "_ask_levels",
        "_ask_keys",
        "_seq",
    )

    def __init__(self) -> None:
        self._orders: dict[str, int] = {}  # order_id -> key * 4 + place
        self._stops: dict[str, tuple[int | None, int]] = {}  # order_id -> (limit_price, seq), stops only
        self._levels: tuple[dict[int, dict[str, int]], ...] = ({}, {}, {}, {})  # by place
        self._keys: tuple[list[int], ...] = ([], [], [], [])  # by place, sorted ascending
        # the same containers as _levels[0], _keys[0], _levels[1], _keys[1], for the hot paths
        self._bid_levels = self._levels[_BIDS]
        self._bid_keys = self._keys[_BIDS]
        self._ask_levels = self._levels[_ASKS]
        self._ask_keys = self._keys[_ASKS]
        self._seq = 0

    # -- adding -------------------------------------------------------------------------------

    def add_limit(self, order_id: str, side: str, price: int, quantity: int) -> None:
        """Rest a LIMIT order at the back of its price level.

        Raises ValueError for a duplicate id, a bad side or a price/quantity <= 0, and
        TypeError for a price/quantity that is not an int.
        """
        orders = self._orders
        if order_id in orders:
            raise ValueError(f"duplicate order id {order_id!r}")
        if type(price) is not int or price <= 0:
            _check_positive_int("price", price)
        if type(quantity) is not int or quantity <= 0:
            _check_positive_int("quantity", quantity)
        if side == BUY:
            levels = self._bid_levels
            keys = self._bid_keys
            key = price
            orders[order_id] = price << 2  # | _BIDS
        elif side == SELL:
            levels = self._ask_levels
            keys = self._ask_keys
            key = -price
            orders[order_id] = (key << 2) | _ASKS
        else:
            raise _bad_side(side)
        level = levels.get(key)
        if level is None:
            levels[key] = {order_id: quantity}
            insort(keys, key)
        else:
            level[order_id] = quantity

    def add_stop(self, order_id: str, side: str, trigger: int, quantity: int, limit_price: int | None) -> None:
        """Hold a pending stop: ``limit_price`` None is SL-M (MARKET when triggered), else SL (LIMIT at it).

        Same errors as ``add_limit``, for ``trigger``, ``quantity`` and a non-None ``limit_price``.
        """
        orders = self._orders
        if order_id in orders:
            raise ValueError(f"duplicate order id {order_id!r}")
        if type(trigger) is not int or trigger <= 0:
            _check_positive_int("trigger", trigger)
        if type(quantity) is not int or quantity <= 0:
            _check_positive_int("quantity", quantity)
        if limit_price is not None and (type(limit_price) is not int or limit_price <= 0):
            _check_positive_int("limit_price", limit_price)
        if side == BUY:
            place = _BUY_STOPS
            key = trigger
        elif side == SELL:
            place = _SELL_STOPS
            key = -trigger
        else:
            raise _bad_side(side)
        seq = self._seq = self._seq + 1
        orders[order_id] = (key << 2) | place
        self._stops[order_id] = (limit_price, seq)
        levels = self._levels[place]
        level = levels.get(key)
        if level is None:
            levels[key] = {order_id: quantity}
            insort(self._keys[place], key)
        else:
            level[order_id] = quantity

    # -- changing -----------------------------------------------------------------------------

    def cancel(self, order_id: str) -> bool:
        """Remove a resting limit or a pending stop; False if the id is not in the book."""
        code = self._orders.pop(order_id, None)
        if code is None:
            return False
        place = code & 3
        key = code >> 2
        if place >= _BUY_STOPS:
            del self._stops[order_id]
        levels = self._levels[place]
        level = levels[key]
        del level[order_id]
        if not level:
            del levels[key]
            keys = self._keys[place]
            del keys[bisect_left(keys, key)]
        return True

    def modify(
        self, order_id: str, *, price: int | None = None, quantity: int | None = None, trigger: int | None = None
    ) -> bool:
        """Change an order that is in the book; False if the id is not in the book.

        ``quantity`` is the new *remaining* quantity (the book does not know what already
        filled). ``price`` is the limit price: of a resting limit, or of a pending SL (an SL-M
        has none: ValueError). ``trigger`` applies to pending stops only (ValueError for a
        resting limit). Exchange rule: a price or trigger change, or a quantity increase,
        loses time priority (the order goes to the back of its level); a quantity decrease
        keeps it. Values <= 0 raise ValueError, non-ints TypeError.
        """
        if price is not None:
            _check_positive_int("price", price)
        if quantity is not None:
            _check_positive_int("quantity", quantity)
        if trigger is not None:
            _check_positive_int("trigger", trigger)
        code = self._orders.get(order_id)
        if code is None:
            return False
        place = code & 3
        key = code >> 2
        sign = -1 if place & 1 else 1
        old_quantity = self._levels[place][key][order_id]
        new_quantity = old_quantity if quantity is None else quantity
        new_key = key
        if place >= _BUY_STOPS:
            old_limit = limit_price = self._stops[order_id][0]
            if trigger is not None:
                new_key = sign * trigger
            if price is not None:
                if old_limit is None:
                    raise ValueError(f"order {order_id!r} is an SL-M stop and has no limit price")
                limit_price = price
            if new_key != key or limit_price != old_limit or new_quantity > old_quantity:
                self._unlink(order_id, place, key)
                self._seq += 1
                self._orders[order_id] = (new_key << 2) | place
                self._stops[order_id] = (limit_price, self._seq)
                self._link(order_id, place, new_key, new_quantity)
                return True
        else:
            if trigger is not None:
                raise ValueError(f"order {order_id!r} is a resting limit and has no trigger")
            if price is not None:
                new_key = sign * price
            if new_key != key or new_quantity > old_quantity:
                self._unlink(order_id, place, key)
                self._orders[order_id] = (new_key << 2) | place
                self._link(order_id, place, new_key, new_quantity)
                return True
        # same or smaller quantity, nothing else changed: keeps its place
        self._levels[place][key][order_id] = new_quantity
        return True

    # -- reading ------------------------------------------------------------------------------

    def remaining(self, order_id: str) -> int | None:
        """Remaining quantity of a resting or pending order, None if it is not in the book."""
        code = self._orders.get(order_id)
        if code is None:
            return None
        return self._levels[code & 3][code >> 2][order_id]

    def __contains__(self, order_id) -> bool:
        return order_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)

    def best_bid(self) -> int | None:
        """Highest resting BUY limit price."""
        keys = self._bid_keys
        return keys[-1] if keys else None

    def best_ask(self) -> int | None:
        """Lowest resting SELL limit price."""
        keys = self._ask_keys
        return -keys[-1] if keys else None

    # -- market ticks -------------------------------------------------------------------------

    def trigger(self, last_price: int) -> list[tuple[str, str, int, int | None]]:
        """Remove and return, in time order, the stops that this last traded price triggers.

        A BUY stop triggers when ``last_price >= trigger``, a SELL stop when ``last_price <= trigger``.
        Each item is ``(order_id, side, quantity, limit_price_or_None)``.
        """
        triggered: list[tuple[int, tuple[str, str, int, int | None]]] = []
        levels_hit = 0
        keys = self._keys[_BUY_STOPS]
        if keys and keys[0] <= last_price:
            levels_hit += self._pop_triggered(_BUY_STOPS, last_price, triggered)
        keys = self._keys[_SELL_STOPS]
        if keys and keys[0] <= -last_price:
            levels_hit += self._pop_triggered(_SELL_STOPS, -last_price, triggered)
        if not levels_hit:
            return []
        if levels_hit > 1:
            triggered.sort()  # by seq, which is unique (one level is in time order already)
        return list(map(_second, triggered))

    def match(self, *, bid: int, ask: int, volume: int) -> list[Fill]:
        """One market tick: fill the resting limits that the market's bid/ask cross, up to ``volume`` per side.

        Buys priced at or above ``ask`` fill first (highest price, then earliest), then sells
        priced at or below ``bid`` (lowest price, then earliest); each at its own price and each
        side with its own ``volume`` budget. A partially filled order keeps its place with the
        reduced remaining quantity; a fully filled one leaves the book. Returns the fills in
        the order they happened.
        """
        fills: list[Fill] = []
        if volume <= 0:
            return fills
        keys = self._bid_keys
        if keys and keys[-1] >= ask:
            self._match_side(self._bid_levels, keys, ask, volume, BUY, 1, fills)
        keys = self._ask_keys
        if keys and keys[-1] >= -bid:
            self._match_side(self._ask_levels, keys, -bid, volume, SELL, -1, fills)
        return fills

    # -- internals ----------------------------------------------------------------------------

    def _match_side(
        self, levels: dict, keys: list, threshold: int, budget: int, side: str, sign: int, fills: list
    ) -> None:
        """Fill levels from the best (``keys[-1]``) down to ``threshold`` until ``budget`` runs out."""
        orders = self._orders
        append = fills.append
        new_object = _new_object
        set_order_id = _set_order_id
        set_side = _set_side
        set_price = _set_price
        set_quantity = _set_quantity
        while keys:
            key = keys[-1]
            if key < threshold:
                return
            level = levels[key]
            price = key * sign
            total = sum(level.values())
            if total <= budget:
                # the whole level fills (deleting from _orders while walking the level is fine)
                for order_id, quantity in level.items():
                    del orders[order_id]
                    fill = new_object(Fill)
                    set_order_id(fill, order_id)
                    set_side(fill, side)
                    set_price(fill, price)
                    set_quantity(fill, quantity)
                    append(fill)
                del levels[key]
                keys.pop()
                budget -= total
                if budget:
                    continue
                return
            # the budget runs out inside this level: earliest first, the last one maybe in part
            done = []
            for order_id, quantity in level.items():
                if quantity >= budget:
                    break
                budget -= quantity
                done.append(order_id)
                del orders[order_id]
                fill = new_object(Fill)
                set_order_id(fill, order_id)
                set_side(fill, side)
                set_price(fill, price)
                set_quantity(fill, quantity)
                append(fill)
            # that loop always ends in its break (total > budget): order_id takes the rest of the budget
            if quantity == budget:
                done.append(order_id)
                del orders[order_id]
            else:  # partial fill: keeps its place with what is left
                level[order_id] = quantity - budget  # an existing key: its place does not change
            fill = new_object(Fill)
            set_order_id(fill, order_id)
            set_side(fill, side)
            set_price(fill, price)
            set_quantity(fill, budget)
            append(fill)
            for order_id in done:
                del level[order_id]
            return

    def _pop_triggered(self, place: int, threshold: int, out: list) -> int:
        """Remove the stop levels of ``place`` with ``key <= threshold``, appending ``(seq, item)`` to ``out``.

        Returns how many levels it removed.
        """
        orders = self._orders
        stops = self._stops
        levels = self._levels[place]
        keys = self._keys[place]
        side = _SIDE_OF_PLACE[place]
        n = bisect_right(keys, threshold)
        for key in keys[:n]:
            for order_id, quantity in levels.pop(key).items():
                del orders[order_id]
                limit_price, seq = stops.pop(order_id)
                out.append((seq, (order_id, side, quantity, limit_price)))
        del keys[:n]
        return n

    def _link(self, order_id: str, place: int, key: int, quantity: int) -> None:
        """Put an order at the back of its level (creating the level if needed); ``_orders`` is not touched."""
        levels = self._levels[place]
        level = levels.get(key)
        if level is None:
            levels[key] = {order_id: quantity}
            insort(self._keys[place], key)
        else:
            level[order_id] = quantity

    def _unlink(self, order_id: str, place: int, key: int) -> None:
        """Take an order out of its level (removing the level if it empties); ``_orders`` is not touched."""
        levels = self._levels[place]
        level = levels[key]
        del level[order_id]
        if not level:
            del levels[key]
            keys = self._keys[place]
            del keys[bisect_left(keys, key)]
