"""The paper exchange's order book: price-time priority, fills at the order's own price, stops."""

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.paper.book import BUY, SELL, Fill, OrderBook


def book_with(*limits):
    """A book holding the given (order_id, side, price, quantity) limits, added in that order."""
    book = OrderBook()
    for order_id, side, price, quantity in limits:
        book.add_limit(order_id, side, price, quantity)
    return book


def ids(fills):
    return [fill.order_id for fill in fills]


# -- fills at the order's own price -----------------------------------------------------------------


def test_buy_limit_fills_at_its_own_price_when_ask_crosses():
    book = book_with(("b1", BUY, 10_050, 10))

    fills = book.match(bid=9_990, ask=10_000, volume=100)

    assert fills == [Fill("b1", BUY, 10_050, 10)]


def test_sell_limit_fills_at_its_own_price_when_bid_crosses():
    book = book_with(("s1", SELL, 9_950, 10))

    fills = book.match(bid=10_000, ask=10_010, volume=100)

    assert fills == [Fill("s1", SELL, 9_950, 10)]


def test_limits_priced_exactly_at_the_far_side_fill():
    book = book_with(("b1", BUY, 10_010, 3), ("s1", SELL, 10_000, 4))

    fills = book.match(bid=10_000, ask=10_010, volume=100)

    assert fills == [Fill("b1", BUY, 10_010, 3), Fill("s1", SELL, 10_000, 4)]


def test_non_crossing_orders_are_untouched():
    book = book_with(("b1", BUY, 10_000, 10), ("s1", SELL, 10_020, 10))

    fills = book.match(bid=10_005, ask=10_015, volume=1_000)

    assert fills == []
    assert book.remaining("b1") == 10
    assert book.remaining("s1") == 10
    assert (book.best_bid(), book.best_ask()) == (10_000, 10_020)


def test_zero_volume_fills_nothing():
    book = book_with(("b1", BUY, 10_050, 10))

    assert book.match(bid=9_990, ask=10_000, volume=0) == []
    assert book.remaining("b1") == 10


def test_fully_filled_orders_leave_the_book():
    book = book_with(("b1", BUY, 10_050, 10), ("s1", SELL, 9_000, 5))

    book.match(bid=9_500, ask=10_000, volume=100)

    assert "b1" not in book
    assert "s1" not in book
    assert len(book) == 0
    assert book.remaining("b1") is None
    assert book.best_bid() is None
    assert book.best_ask() is None


def test_fills_are_equal_frozen_fill_values():
    fill = book_with(("b1", BUY, 10_050, 10)).match(bid=1, ask=10_000, volume=4)[0]

    assert type(fill) is Fill
    assert fill == Fill(order_id="b1", side=BUY, price=10_050, quantity=4)
    assert hash(fill) == hash(Fill("b1", BUY, 10_050, 4))
    assert repr(fill) == "Fill(order_id='b1', side='BUY', price=10050, quantity=4)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fill.quantity = 5


# -- price-time priority ----------------------------------------------------------------------------


def test_buys_fill_highest_price_first_then_earliest_first():
    book = book_with(
        ("low", BUY, 10_000, 1),
        ("high_early", BUY, 10_020, 1),
        ("mid", BUY, 10_010, 1),
        ("high_late", BUY, 10_020, 1),
    )

    fills = book.match(bid=9_000, ask=10_000, volume=100)

    assert ids(fills) == ["high_early", "high_late", "mid", "low"]
    assert [fill.price for fill in fills] == [10_020, 10_020, 10_010, 10_000]


def test_sells_fill_lowest_price_first_then_earliest_first():
    book = book_with(
        ("high", SELL, 10_020, 1),
        ("low_early", SELL, 10_000, 1),
        ("mid", SELL, 10_010, 1),
        ("low_late", SELL, 10_000, 1),
    )

    fills = book.match(bid=10_020, ask=11_000, volume=100)

    assert ids(fills) == ["low_early", "low_late", "mid", "high"]
    assert [fill.price for fill in fills] == [10_000, 10_000, 10_010, 10_020]


def test_only_the_levels_that_cross_fill():
    book = book_with(
        ("b_in", BUY, 10_010, 5), ("b_out", BUY, 10_000, 5), ("s_in", SELL, 9_990, 5), ("s_out", SELL, 10_000, 5)
    )

    fills = book.match(bid=9_995, ask=10_005, volume=100)

    assert ids(fills) == ["b_in", "s_in"]
    assert book.best_bid() == 10_000
    assert book.best_ask() == 10_000


def test_buy_fills_come_before_sell_fills_within_a_tick():
    book = book_with(("s1", SELL, 9_000, 1), ("b1", BUY, 11_000, 1))

    assert ids(book.match(bid=10_000, ask=10_000, volume=10)) == ["b1", "s1"]


# -- volume -----------------------------------------------------------------------------------------


def test_partial_fill_when_volume_runs_out_keeps_the_order_first_with_the_rest():
    book = book_with(("b1", BUY, 10_050, 10), ("b2", BUY, 10_050, 10))

    first = book.match(bid=9_000, ask=10_000, volume=4)
    assert first == [Fill("b1", BUY, 10_050, 4)]
    assert book.remaining("b1") == 6

    second = book.match(bid=9_000, ask=10_000, volume=8)
    assert second == [Fill("b1", BUY, 10_050, 6), Fill("b2", BUY, 10_050, 2)]
    assert "b1" not in book
    assert book.remaining("b2") == 8


def test_volume_that_ends_exactly_on_an_order_fills_it_fully_and_stops():
    book = book_with(("b1", BUY, 10_050, 5), ("b2", BUY, 10_050, 5), ("b3", BUY, 10_040, 5))

    fills = book.match(bid=9_000, ask=10_000, volume=5)

    assert fills == [Fill("b1", BUY, 10_050, 5)]
    assert "b1" not in book
    assert book.remaining("b2") == 5
    assert book.best_bid() == 10_050


def test_volume_spans_several_levels_and_stops_inside_one():
    book = book_with(("a", BUY, 10_030, 3), ("b", BUY, 10_020, 3), ("c", BUY, 10_010, 3), ("d", BUY, 10_010, 3))

    fills = book.match(bid=9_000, ask=10_000, volume=8)

    assert fills == [Fill("a", BUY, 10_030, 3), Fill("b", BUY, 10_020, 3), Fill("c", BUY, 10_010, 2)]
    assert book.best_bid() == 10_010
    assert book.remaining("c") == 1
    assert book.remaining("d") == 3


def test_each_side_has_its_own_volume_budget():
    book = book_with(("b1", BUY, 10_050, 7), ("b2", BUY, 10_050, 7), ("s1", SELL, 9_950, 7), ("s2", SELL, 9_950, 7))

    fills = book.match(bid=10_000, ask=10_000, volume=10)

    assert fills == [
        Fill("b1", BUY, 10_050, 7),
        Fill("b2", BUY, 10_050, 3),
        Fill("s1", SELL, 9_950, 7),
        Fill("s2", SELL, 9_950, 3),
    ]


# -- cancel -----------------------------------------------------------------------------------------


def test_cancel_removes_a_resting_limit():
    book = book_with(("b1", BUY, 10_000, 5), ("b2", BUY, 10_000, 5))

    assert book.cancel("b1") is True

    assert "b1" not in book
    assert len(book) == 1
    assert ids(book.match(bid=1, ask=10_000, volume=100)) == ["b2"]


def test_cancel_removes_a_pending_stop():
    book = OrderBook()
    book.add_stop("st", SELL, 9_900, 5, None)

    assert book.cancel("st") is True

    assert "st" not in book
    assert book.trigger(9_000) == []


def test_cancel_of_an_unknown_or_already_gone_order_returns_false():
    book = book_with(("b1", BUY, 10_000, 5))

    assert book.cancel("nope") is False
    assert book.cancel("b1") is True
    assert book.cancel("b1") is False


def test_cancelling_the_last_order_of_the_best_level_moves_best_bid_and_ask():
    book = book_with(("b1", BUY, 10_000, 5), ("b2", BUY, 9_990, 5), ("s1", SELL, 10_010, 5), ("s2", SELL, 10_020, 5))

    book.cancel("b1")
    book.cancel("s1")

    assert book.best_bid() == 9_990
    assert book.best_ask() == 10_020


def test_a_filled_order_can_no_longer_be_cancelled():
    book = book_with(("b1", BUY, 10_000, 5))
    book.match(bid=1, ask=10_000, volume=5)

    assert book.cancel("b1") is False


# -- modify -----------------------------------------------------------------------------------------


def test_modify_price_change_loses_time_priority():
    book = book_with(("first", BUY, 10_000, 5), ("second", BUY, 10_010, 5))

    assert book.modify("first", price=10_010) is True

    assert book.remaining("first") == 5
    assert ids(book.match(bid=1, ask=10_000, volume=100)) == ["second", "first"]


def test_modify_price_moves_the_order_and_removes_its_empty_level():
    book = book_with(("b1", BUY, 10_000, 5), ("s1", SELL, 10_050, 5))

    book.modify("b1", price=9_900)
    book.modify("s1", price=10_100)

    assert book.best_bid() == 9_900
    assert book.best_ask() == 10_100
    assert book.match(bid=10_000, ask=9_950, volume=100) == []


def test_modify_quantity_increase_loses_time_priority():
    book = book_with(("first", SELL, 10_000, 5), ("second", SELL, 10_000, 5))

    assert book.modify("first", quantity=6) is True

    assert book.remaining("first") == 6
    assert ids(book.match(bid=10_000, ask=11_000, volume=100)) == ["second", "first"]


def test_modify_quantity_decrease_keeps_time_priority():
    book = book_with(("first", SELL, 10_000, 5), ("second", SELL, 10_000, 5))

    assert book.modify("first", quantity=2) is True

    assert book.remaining("first") == 2
    assert book.match(bid=10_000, ask=11_000, volume=100) == [
        Fill("first", SELL, 10_000, 2),
        Fill("second", SELL, 10_000, 5),
    ]


def test_modify_with_the_same_price_and_quantity_keeps_time_priority():
    book = book_with(("first", BUY, 10_000, 5), ("second", BUY, 10_000, 5))

    assert book.modify("first", price=10_000, quantity=5) is True

    assert ids(book.match(bid=1, ask=10_000, volume=100)) == ["first", "second"]


def test_modify_of_an_unknown_order_returns_false():
    assert OrderBook().modify("nope", quantity=3) is False


@pytest.mark.parametrize("change", [{"quantity": 0}, {"quantity": -1}, {"price": 0}, {"trigger": 0}])
def test_modify_with_a_non_positive_value_is_rejected(change):
    book = book_with(("b1", BUY, 10_000, 5))

    with pytest.raises(ValueError):
        book.modify("b1", **change)
    assert book.remaining("b1") == 5


def test_modify_trigger_of_a_resting_limit_is_rejected():
    book = book_with(("b1", BUY, 10_000, 5))

    with pytest.raises(ValueError, match="no trigger"):
        book.modify("b1", trigger=10_100)


def test_modify_stop_trigger_moves_it_to_its_new_trigger():
    book = OrderBook()
    book.add_stop("moved", BUY, 10_100, 1, None)
    book.add_stop("stays", BUY, 10_100, 1, None)

    book.modify("moved", trigger=10_090)

    assert book.trigger(10_095) == [("moved", BUY, 1, None)]
    assert "stays" in book


def test_modify_stop_trigger_loses_time_priority():
    book = OrderBook()
    book.add_stop("first", BUY, 10_100, 1, None)
    book.add_stop("second", BUY, 10_100, 1, None)

    book.modify("first", trigger=10_090)  # still triggers at 10_100, but now after "second"
    book.modify("second", quantity=1)  # unchanged: keeps its place

    assert [item[0] for item in book.trigger(10_100)] == ["second", "first"]


def test_modify_stop_quantity_and_limit_price():
    book = OrderBook()
    book.add_stop("sl", SELL, 9_900, 5, 9_880)
    book.add_stop("other", SELL, 9_900, 5, 9_880)

    book.modify("sl", quantity=3)  # decrease: keeps its place
    assert book.trigger(9_900)[0] == ("sl", SELL, 3, 9_880)

    book.add_stop("sl2", SELL, 9_900, 5, 9_880)
    book.add_stop("other2", SELL, 9_900, 5, 9_880)
    book.modify("sl2", price=9_870)  # limit price change: goes to the back
    assert book.trigger(9_900) == [("other2", SELL, 5, 9_880), ("sl2", SELL, 5, 9_870)]


def test_modify_price_of_an_sl_m_stop_is_rejected():
    book = OrderBook()
    book.add_stop("slm", SELL, 9_900, 5, None)

    with pytest.raises(ValueError, match="SL-M"):
        book.modify("slm", price=9_850)


# -- stops ------------------------------------------------------------------------------------------


def test_buy_stop_triggers_when_last_price_reaches_or_passes_its_trigger():
    book = OrderBook()
    book.add_stop("st", BUY, 10_100, 5, None)

    assert book.trigger(10_095) == []
    assert "st" in book
    assert book.trigger(10_100) == [("st", BUY, 5, None)]


def test_sell_stop_triggers_when_last_price_reaches_or_falls_below_its_trigger():
    book = OrderBook()
    book.add_stop("st", SELL, 9_900, 5, None)

    assert book.trigger(9_905) == []
    assert book.trigger(9_850) == [("st", SELL, 5, None)]


def test_sl_returns_its_limit_price_and_sl_m_returns_none():
    book = OrderBook()
    book.add_stop("sl", BUY, 10_100, 5, 10_120)
    book.add_stop("slm", BUY, 10_100, 7, None)

    assert book.trigger(10_100) == [("sl", BUY, 5, 10_120), ("slm", BUY, 7, None)]


def test_triggered_stops_leave_the_book():
    book = OrderBook()
    book.add_stop("st", BUY, 10_100, 5, 10_120)

    book.trigger(10_200)

    assert "st" not in book
    assert len(book) == 0
    assert book.remaining("st") is None
    assert book.cancel("st") is False
    assert book.trigger(10_200) == []


def test_triggered_stops_come_back_in_time_order_across_levels_and_sides():
    book = OrderBook()
    book.add_stop("b_far", BUY, 10_000, 1, None)  # triggers at 10_000 or above
    book.add_stop("s1", SELL, 10_050, 1, None)  # triggers at 10_050 or below
    book.add_stop("b_near", BUY, 9_990, 1, 9_995)
    book.add_stop("b_not", BUY, 10_060, 1, None)
    book.add_stop("s_not", SELL, 9_000, 1, None)

    assert [item[0] for item in book.trigger(10_020)] == ["b_far", "s1", "b_near"]
    assert len(book) == 2


def test_a_triggered_sl_can_be_added_back_as_a_limit_under_the_same_id():
    book = OrderBook()
    book.add_stop("sl", BUY, 10_100, 5, 10_120)

    ((order_id, side, quantity, limit_price),) = book.trigger(10_100)
    book.add_limit(order_id, side, limit_price, quantity)

    assert book.best_bid() == 10_120
    assert book.match(bid=10_100, ask=10_110, volume=10) == [Fill("sl", BUY, 10_120, 5)]


def test_pending_stops_are_not_matched_and_do_not_count_as_bids_or_asks():
    book = OrderBook()
    book.add_stop("b", BUY, 10_100, 5, 10_200)
    book.add_stop("s", SELL, 9_900, 5, 9_800)

    assert book.match(bid=20_000, ask=1, volume=100) == []
    assert book.best_bid() is None
    assert book.best_ask() is None
    assert book.remaining("b") == 5
    assert len(book) == 2


# -- reading ----------------------------------------------------------------------------------------


def test_best_bid_and_ask_of_an_empty_book_are_none():
    book = OrderBook()

    assert book.best_bid() is None
    assert book.best_ask() is None
    assert len(book) == 0


def test_best_bid_and_ask_skip_levels_emptied_by_fills():
    book = book_with(("b1", BUY, 10_050, 5), ("b2", BUY, 10_000, 5), ("s1", SELL, 9_990, 5), ("s2", SELL, 10_060, 5))

    book.match(bid=9_995, ask=10_040, volume=100)

    assert book.best_bid() == 10_000
    assert book.best_ask() == 10_060


def test_len_counts_resting_limits_and_pending_stops():
    book = book_with(("b1", BUY, 10_000, 5), ("s1", SELL, 10_010, 5))
    book.add_stop("st", SELL, 9_000, 5, None)

    assert len(book) == 3
    assert "st" in book and "b1" in book and "x" not in book


# -- validation -------------------------------------------------------------------------------------


def test_duplicate_order_id_is_rejected_for_limits_and_stops():
    book = book_with(("o1", BUY, 10_000, 5))
    book.add_stop("st", SELL, 9_000, 5, None)

    with pytest.raises(ValueError, match="duplicate"):
        book.add_limit("o1", SELL, 10_010, 5)
    with pytest.raises(ValueError, match="duplicate"):
        book.add_stop("o1", BUY, 10_100, 5, None)
    with pytest.raises(ValueError, match="duplicate"):
        book.add_limit("st", BUY, 10_000, 5)
    assert len(book) == 2


@pytest.mark.parametrize(
    ("side", "price", "quantity"),
    [(BUY, 10_000, 0), (BUY, 10_000, -5), (SELL, 0, 5), (SELL, -100, 5), ("buy", 10_000, 5), ("HOLD", 10_000, 5)],
)
def test_bad_limit_orders_are_rejected_with_value_error(side, price, quantity):
    book = OrderBook()

    with pytest.raises(ValueError):
        book.add_limit("o1", side, price, quantity)
    assert len(book) == 0
    assert book.best_bid() is None and book.best_ask() is None


@pytest.mark.parametrize(
    ("side", "trigger", "quantity", "limit_price"),
    [(BUY, 0, 5, None), (BUY, 10_000, 0, None), (SELL, 10_000, 5, 0), ("SHORT", 10_000, 5, None)],
)
def test_bad_stop_orders_are_rejected_with_value_error(side, trigger, quantity, limit_price):
    book = OrderBook()

    with pytest.raises(ValueError):
        book.add_stop("o1", side, trigger, quantity, limit_price)
    assert len(book) == 0


@pytest.mark.parametrize("price", [Decimal("100.50"), 100.5, "10050", True])
def test_prices_must_be_int_paise(price):
    with pytest.raises(TypeError):
        OrderBook().add_limit("o1", BUY, price, 5)


# -- properties -------------------------------------------------------------------------------------

_prices = st.integers(min_value=95, max_value=105)
_quantities = st.integers(min_value=1, max_value=20)
_adds = st.tuples(st.just("add"), st.sampled_from([BUY, SELL]), _prices, _quantities)
_cancels = st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=60))
_matches = st.tuples(st.just("match"), _prices, st.integers(min_value=0, max_value=10), st.integers(0, 60))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_adds, _cancels, _matches), min_size=10, max_size=100))
def test_quantity_is_conserved_and_fills_are_at_the_orders_own_price(ops):
    book = OrderBook()
    original: dict[str, tuple[str, int, int]] = {}  # order_id -> (side, price, quantity)
    filled: dict[str, int] = {}
    cancelled: dict[str, int] = {}
    issued: list[str] = []
    for op in ops:
        if op[0] == "add":
            _, side, price, quantity = op
            order_id = f"o{len(issued)}"
            issued.append(order_id)
            book.add_limit(order_id, side, price, quantity)
            original[order_id] = (side, price, quantity)
        elif op[0] == "cancel":
            if not issued:
                continue
            order_id = issued[op[1] % len(issued)]
            left = book.remaining(order_id)
            assert book.cancel(order_id) is (left is not None)
            if left is not None:
                cancelled[order_id] = left
        else:
            _, bid, spread, volume = op
            ask = bid + spread
            fills = book.match(bid=bid, ask=ask, volume=volume)
            per_side = {BUY: 0, SELL: 0}
            for fill in fills:
                side, price, _quantity = original[fill.order_id]
                assert fill.side == side
                assert fill.price == price  # its own price ...
                if side == BUY:
                    assert price >= ask  # ... so never above its limit, and only when the ask crosses
                else:
                    assert price <= bid
                assert fill.quantity > 0
                per_side[side] += fill.quantity
                filled[fill.order_id] = filled.get(fill.order_id, 0) + fill.quantity
            assert per_side[BUY] <= volume and per_side[SELL] <= volume

    for order_id, (_side, _price, quantity) in original.items():
        remaining = book.remaining(order_id) or 0
        assert filled.get(order_id, 0) + remaining + cancelled.get(order_id, 0) == quantity
        assert not (remaining and order_id in cancelled)
    assert len(book) == sum(1 for order_id in original if book.remaining(order_id))


class ReferenceBook:
    """A slow, obviously correct model of OrderBook: sort everything on every call."""

    def __init__(self):
        self.orders = {}  # order_id -> dict(kind, side, price, trigger, limit, quantity, seq)
        self.seq = 0

    def _next(self):
        self.seq += 1
        return self.seq

    def add_limit(self, order_id, side, price, quantity):
        self.orders[order_id] = dict(kind="limit", side=side, price=price, quantity=quantity, seq=self._next())

    def add_stop(self, order_id, side, trigger, quantity, limit_price):
        self.orders[order_id] = dict(
            kind="stop", side=side, trigger=trigger, limit=limit_price, quantity=quantity, seq=self._next()
        )

    def cancel(self, order_id):
        return self.orders.pop(order_id, None) is not None

    def modify(self, order_id, price=None, quantity=None, trigger=None):
        order = self.orders.get(order_id)
        if order is None:
            return False
        changed = quantity is not None and quantity > order["quantity"]
        if order["kind"] == "limit":
            changed |= price is not None and price != order["price"]
            order["price"] = order["price"] if price is None else price
        else:
            changed |= trigger is not None and trigger != order["trigger"]
            changed |= price is not None and price != order["limit"]
            order["trigger"] = order["trigger"] if trigger is None else trigger
            order["limit"] = order["limit"] if price is None else price
        order["quantity"] = order["quantity"] if quantity is None else quantity
        if changed:
            order["seq"] = self._next()
        return True

    def match(self, bid, ask, volume):
        fills = []
        limits = [(oid, o) for oid, o in self.orders.items() if o["kind"] == "limit"]
        buys = sorted(
            (x for x in limits if x[1]["side"] == BUY and x[1]["price"] >= ask),
            key=lambda x: (-x[1]["price"], x[1]["seq"]),
        )
        sells = sorted(
            (x for x in limits if x[1]["side"] == SELL and x[1]["price"] <= bid),
            key=lambda x: (x[1]["price"], x[1]["seq"]),
        )
        for side_orders in (buys, sells):
            budget = volume
            for oid, o in side_orders:
                if budget <= 0:
                    break
                quantity = min(budget, o["quantity"])
                fills.append(Fill(oid, o["side"], o["price"], quantity))
                budget -= quantity
                o["quantity"] -= quantity
                if not o["quantity"]:
                    del self.orders[oid]
        return fills

    def trigger(self, last_price):
        hit = sorted(
            (
                (o["seq"], oid, o)
                for oid, o in self.orders.items()
                if o["kind"] == "stop"
                and (last_price >= o["trigger"] if o["side"] == BUY else last_price <= o["trigger"])
            ),
            key=lambda x: x[0],
        )
        for _seq, oid, _o in hit:
            del self.orders[oid]
        return [(oid, o["side"], o["quantity"], o["limit"]) for _seq, oid, o in hit]

    def best(self, side):
        prices = [o["price"] for o in self.orders.values() if o["kind"] == "limit" and o["side"] == side]
        if not prices:
            return None
        return max(prices) if side == BUY else min(prices)


_near = st.integers(min_value=98, max_value=102)  # few levels, so that orders share them
_small = st.integers(min_value=1, max_value=10)
_target = st.integers(min_value=0, max_value=40)  # which issued id (modulo), gone ones included
_add_limit = st.tuples(st.just("add_limit"), st.sampled_from([BUY, SELL]), _near, _small)
_ops = st.one_of(
    _add_limit,
    _add_limit,
    st.tuples(st.just("add_stop"), st.sampled_from([BUY, SELL]), _near, _small, st.none() | _near),
    st.tuples(st.just("cancel"), _target),
    st.tuples(st.just("modify"), _target, _near, st.none(), st.none()),
    st.tuples(st.just("modify"), _target, st.none(), _small, st.none()),
    st.tuples(st.just("modify"), _target, st.none(), st.none(), _near),
    st.tuples(st.just("modify"), _target, st.none() | _near, st.none() | _small, st.none() | _near),
    st.tuples(st.just("match"), _near, st.integers(min_value=0, max_value=3), st.integers(0, 25)),
    st.tuples(st.just("trigger"), _near),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ops, min_size=20, max_size=100))
def test_book_behaves_like_a_simple_sorted_reference_model(ops):
    book, model = OrderBook(), ReferenceBook()
    issued = []
    for op in ops:
        kind = op[0]
        if kind == "add_limit":
            issued.append(f"o{len(issued)}")
            book.add_limit(issued[-1], *op[1:])
            model.add_limit(issued[-1], *op[1:])
        elif kind == "add_stop":
            issued.append(f"o{len(issued)}")
            book.add_stop(issued[-1], *op[1:])
            model.add_stop(issued[-1], *op[1:])
        elif kind == "cancel" and issued:
            order_id = issued[op[1] % len(issued)]
            assert book.cancel(order_id) == model.cancel(order_id)
        elif kind == "modify" and issued:
            order_id = issued[op[1] % len(issued)]
            order = model.orders.get(order_id)
            price, quantity, trigger = op[2:]
            invalid = order is not None and (
                (order["kind"] == "limit" and trigger is not None)
                or (order["kind"] == "stop" and price is not None and order["limit"] is None)
            )
            if invalid:
                with pytest.raises(ValueError):
                    book.modify(order_id, price=price, quantity=quantity, trigger=trigger)
            else:
                assert book.modify(order_id, price=price, quantity=quantity, trigger=trigger) == model.modify(
                    order_id, price=price, quantity=quantity, trigger=trigger
                )
        elif kind == "match":
            _, bid, spread, volume = op
            assert book.match(bid=bid, ask=bid + spread, volume=volume) == model.match(bid, bid + spread, volume)
        elif kind == "trigger":
            assert book.trigger(op[1]) == model.trigger(op[1])

        assert len(book) == len(model.orders)
        assert book.best_bid() == model.best(BUY)
        assert book.best_ask() == model.best(SELL)
    for order_id in issued:
        order = model.orders.get(order_id)
        assert book.remaining(order_id) == (None if order is None else order["quantity"])
        assert (order_id in book) == (order is not None)
