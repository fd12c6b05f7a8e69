"""Tests of portfolio.fifo: FIFO lot matching and PnL (pure Python, no database)."""

from __future__ import annotations

import json
from collections import deque
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio.fifo import (
    BUY,
    SCALE,
    SELL,
    PositionState,
    fifo_match,
    fifo_match_by_key,
    from_units,
    to_units,
)

D = Decimal


def state_after(*fills):
    state = PositionState()
    for fill in fills:
        state.apply(*fill)
    return state


def lots_of(state):
    return [(q, p) for q, p in state.lots]


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------


def test_long_then_partial_close_realizes_the_closed_part_and_keeps_the_rest_open():
    state = PositionState()
    assert state.apply(BUY, 10, D("100.00")) == 0
    realized = state.apply(SELL, 4, D("105.50"))

    assert realized == D("22.00")  # (105.50 - 100) x 4
    assert state.realized_pnl == D("22.00")
    assert state.net_quantity == 6
    assert lots_of(state) == [(6, D("100"))]
    assert state.average_price == D("100.0000")
    assert state.cash_flow == D("-1000") + D("422")


def test_short_then_cover_realizes_lot_price_minus_buy_price():
    state = PositionState()
    state.apply(SELL, 50, D("250.05"))
    assert state.net_quantity == -50

    realized = state.apply(BUY, 50, D("248.00"))

    assert realized == D("102.50")  # (250.05 - 248.00) x 50
    assert state.net_quantity == 0
    assert state.lots == []
    assert state.realized_pnl == state.cash_flow == D("102.50")


def test_short_then_cover_at_a_higher_price_is_a_loss():
    state = state_after((SELL, 10, "100"))
    assert state.apply(BUY, 10, "101.25") == D("-12.50")


def test_flip_long_to_short_through_zero_closes_all_and_opens_the_remainder_at_the_fill_price():
    state = state_after((BUY, 10, "100"), (BUY, 5, "102"))

    realized = state.apply(SELL, 20, "110")

    assert realized == D("100") + D("40")  # 10 x (110-100) + 5 x (110-102)
    assert state.net_quantity == -5
    assert lots_of(state) == [(5, D("110"))]
    assert state.average_price == D("110")
    assert state.unrealized_pnl("108") == D("10")  # short 5 from 110, now 108


def test_flip_short_to_long_through_zero():
    state = state_after((SELL, 3, "50.00"), (SELL, 2, "51.00"))

    realized = state.apply(BUY, 8, "49.00")

    assert realized == D("3") + D("4")  # 3 x (50-49) + 2 x (51-49)
    assert state.net_quantity == 3
    assert lots_of(state) == [(3, D("49"))]
    assert state.unrealized_pnl("49.05") == D("0.15")


def test_closing_exactly_to_zero_leaves_no_lot():
    state = state_after((BUY, 7, "10"), (SELL, 7, "11"))
    assert state.is_flat
    assert state.lots == []
    assert state.realized_pnl == D("7")


def test_same_direction_fills_append_lots_in_order():
    state = state_after((BUY, 1, "10"), (BUY, 2, "11"), (BUY, 3, "12"))
    assert lots_of(state) == [(1, D("10")), (2, D("11")), (3, D("12"))]
    assert state.net_quantity == 6
    assert state.realized_pnl == 0


def test_several_lots_close_in_fifo_order_earliest_first():
    state = state_after((BUY, 5, "100"), (BUY, 5, "101"), (BUY, 5, "102"))

    realized = state.apply(SELL, 12, "110")

    # 5 x 10 + 5 x 9 + 2 x 8: the first two lots go whole, the third is cut to 3
    assert realized == D("111")
    assert lots_of(state) == [(3, D("102"))]


def test_fifo_realizes_a_different_pnl_than_average_cost_would():
    state = state_after((BUY, 10, "100"), (BUY, 10, "120"))
    average_cost = state.average_price
    assert average_cost == D("110")

    realized = state.apply(SELL, 10, "130")

    assert realized == D("300")  # FIFO closes the 100 lot: (130 - 100) x 10
    assert realized != (D("130") - average_cost) * 10  # average cost would say 200
    assert lots_of(state) == [(10, D("120"))]
    assert state.average_price == D("120")  # average-cost accounting would still say 110
    # The totals agree, only the split between realized and unrealized differs.
    assert state.realized_pnl + state.unrealized_pnl("130") == D("400")


def test_flat_position_has_zero_average_and_unrealized():
    state = PositionState()
    assert state.average_price == 0
    assert state.unrealized_pnl("123.45") == 0
    assert state.open_cost == 0

    state.apply(BUY, 3, "10")
    state.apply(SELL, 3, "12")
    assert state.average_price == 0
    assert state.unrealized_pnl("999") == 0
    assert state.realized_pnl == D("6")


def test_unrealized_long_is_last_minus_lot_price_per_lot():
    state = state_after((BUY, 10, "100"), (BUY, 20, "103.10"))
    assert state.unrealized_pnl("105") == D("50") + D("38")  # 10 x 5 + 20 x 1.90
    assert state.unrealized_pnl("99") == D("-10") + D("-82")


def test_unrealized_short_is_lot_price_minus_last_per_lot():
    state = state_after((SELL, 10, "100"), (SELL, 20, "103.10"))
    assert state.unrealized_pnl("101") == D("-10") + D("42")
    assert state.total_pnl("101") == state.realized_pnl + state.unrealized_pnl("101")


def test_average_price_is_quantity_weighted_and_rounded_half_even_to_four_places():
    assert state_after((BUY, 1, "100.00"), (BUY, 2, "100.01")).average_price == D("100.0067")  # 100.00666..
    assert state_after((BUY, 1, "0.0001"), (BUY, 1, "0.0002")).average_price == D("0.0002")  # .00015 -> even
    assert state_after((BUY, 1, "0.0002"), (BUY, 1, "0.0003")).average_price == D("0.0002")  # .00025 -> even
    short = state_after((SELL, 3, "10"), (SELL, 1, "11"))
    assert short.average_price == D("10.25")
    assert short.open_cost == D("41")


def test_outputs_are_exact_decimals_with_four_places():
    state = state_after((BUY, 3, "100.05"), (SELL, 1, "100.10"))
    for value in (state.realized_pnl, state.cash_flow, state.average_price, state.unrealized_pnl("101")):
        assert isinstance(value, Decimal)
        assert value.as_tuple().exponent == -4
    assert str(state.realized_pnl) == "0.0500"
    assert all(isinstance(q, int) and isinstance(p, Decimal) for q, p in state.lots)


def test_prices_may_be_decimal_str_or_whole_rupee_int():
    assert to_units(D("1.05")) == to_units("1.05") == 10_500
    assert to_units(2) == 2 * SCALE
    assert to_units("100.05000") == 1_000_500  # trailing zeros beyond 4 places are fine
    assert to_units("0.0025") == 25  # currency-derivative tick
    assert from_units(10_500) == D("1.05")


def test_apply_returns_only_that_fills_realized_pnl():
    state = PositionState()
    assert state.apply(BUY, 2, "10") == 0
    assert state.apply(SELL, 1, "13") == D("3")
    assert state.apply(SELL, 1, "12") == D("2")
    assert state.realized_pnl == D("5")


def test_apply_many_returns_the_batch_realized_pnl_and_matches_apply_one_by_one():
    fills = [(BUY, 10, D("100")), (SELL, 4, D("101")), (SELL, 10, D("99")), (BUY, 1, D("98.5"))]
    state = PositionState()
    state.apply(BUY, 1, "90")
    realized = state.apply_many(fills)
    one_by_one = state_after((BUY, 1, "90"), *fills)
    assert state == one_by_one
    assert realized == one_by_one.realized_pnl - 0


def test_to_dict_round_trip_through_json_then_continuing_equals_never_stopping():
    first = [(BUY, 10, "100"), (BUY, 5, "101.05"), (SELL, 12, "102")]
    second = [(SELL, 10, "99.95"), (BUY, 4, "98"), (BUY, 3, "100.10")]

    saved = json.dumps(fifo_match(first).to_dict())
    resumed = PositionState.from_dict(json.loads(saved))
    assert resumed == fifo_match(first)
    resumed.apply_many(second)

    uninterrupted = fifo_match(first + second)
    assert resumed == uninterrupted
    assert resumed.to_dict() == uninterrupted.to_dict()
    assert resumed.realized_pnl == uninterrupted.realized_pnl
    assert resumed.unrealized_pnl("100") == uninterrupted.unrealized_pnl("100")


def test_to_dict_holds_lots_as_lists_of_strings():
    data = state_after((SELL, 2, "10.5"), (SELL, 1, "11")).to_dict()
    assert data["net_quantity"] == -3
    assert data["lots"] == [["2", "10.5000"], ["1", "11.0000"]]
    assert data["cash_flow"] == "32.0000"
    assert data["realized_pnl"] == "0.0000"


def test_from_dict_can_seed_an_opening_position_from_realized_only():
    state = PositionState.from_dict({"net_quantity": 10, "lots": [["10", "100"]], "realized_pnl": "0"})
    assert state.cash_flow == D("-1000")
    assert state.apply(SELL, 10, "101") == D("10")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"net_quantity": 5, "lots": [["4", "10"]], "cash_flow": "-40"}, "sum to 4"),
        ({"net_quantity": 1, "lots": [["1", "10"]], "cash_flow": "-10", "realized_pnl": "1"}, "does not match"),
        ({"net_quantity": 1, "lots": [["0", "10"]], "cash_flow": "0"}, "quantity must be positive"),
        ({"net_quantity": 1, "lots": [["1", "-10"]], "cash_flow": "10"}, "negative"),
        ({"net_quantity": 0, "lots": []}, "cash_flow or realized_pnl"),
        ({"version": 99, "net_quantity": 0, "lots": [], "cash_flow": "0"}, "version"),
    ],
)
def test_from_dict_rejects_inconsistent_state(data, message):
    with pytest.raises(ValueError, match=message):
        PositionState.from_dict(data)


@pytest.mark.parametrize("quantity", [0, -5, 1.5, True, "5", None])
def test_invalid_quantity_raises_value_error_naming_quantity(quantity):
    state = PositionState()
    with pytest.raises(ValueError, match="quantity"):
        state.apply(BUY, quantity, "10")
    assert state == PositionState()


@pytest.mark.parametrize("side", ["buy", "HOLD", "", None, 1])
def test_bad_side_raises_value_error_naming_side(side):
    with pytest.raises(ValueError, match="side"):
        PositionState().apply(side, 1, "10")


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (D("-0.05"), "negative"),
        ("-1", "negative"),
        (-1, "negative"),
        (10.5, "not float"),
        (True, "not bool"),
        ("abc", "not a decimal"),
        (D("NaN"), "finite"),
        ("Infinity", "finite"),
        ("100.00001", "more than 4 decimal places"),
    ],
)
def test_bad_price_raises_value_error_naming_the_problem(price, message):
    with pytest.raises(ValueError, match=message):
        PositionState().apply(SELL, 1, price)
    with pytest.raises(ValueError, match=message):
        PositionState().unrealized_pnl(price)


def test_apply_many_is_all_or_nothing_and_names_the_first_bad_fill():
    state = state_after((BUY, 10, "100"))
    before = state.to_dict()
    fills = [(SELL, 4, D("101")), (SELL, 20, D("102")), (SELL, 0, D("103")), ("HOLD", 1, D("1"))]

    with pytest.raises(ValueError, match=r"fill 2: quantity must be a positive int"):
        state.apply_many(fills)

    assert state.to_dict() == before
    with pytest.raises(ValueError, match=r"fill 0: expected \(side, quantity, price\)"):
        state.apply_many([(BUY, 1)])
    with pytest.raises(ValueError, match=r"fill 1: price must not be negative"):
        state.apply_many(iter([(BUY, 1, "1"), (BUY, 1, "-1")]))
    assert state.to_dict() == before


def test_fifo_match_by_key_keeps_one_position_per_key():
    fills = [
        (("INFY", "CNC"), BUY, 10, D("1500")),
        (("INFY", "MIS"), SELL, 5, D("1501")),
        (("INFY", "CNC"), SELL, 4, D("1510")),
        (("TCS", "CNC"), BUY, 1, D("3500.05")),
        (("INFY", "MIS"), BUY, 5, D("1499")),
    ]
    states = fifo_match_by_key(fills)
    assert states[("INFY", "CNC")] == fifo_match([f[1:] for f in fills if f[0] == ("INFY", "CNC")])
    assert states[("INFY", "CNC")].net_quantity == 6
    assert states[("INFY", "MIS")].realized_pnl == D("10")
    assert states[("TCS", "CNC")].average_price == D("3500.05")

    more = [(("TCS", "CNC"), SELL, 1, D("3510")), (("SBIN", "MIS"), BUY, 1, D("800"))]
    fifo_match_by_key(more, states)
    assert states[("TCS", "CNC")].realized_pnl == D("9.95")
    assert states[("SBIN", "MIS")].net_quantity == 1


def test_batch_fills_may_carry_extra_trailing_items_which_are_ignored():
    plain = fifo_match([(BUY, 2, D("10")), (SELL, 1, D("11"))])
    assert fifo_match([(BUY, 2, D("10"), "trade-1"), (SELL, 1, D("11"), "trade-2", 1700000000)]) == plain
    keyed = fifo_match_by_key([("X", BUY, 2, D("10"), "trade-1"), ("X", SELL, 1, D("11"), "trade-2")])
    assert keyed["X"] == plain


def test_fifo_match_by_key_is_all_or_nothing():
    states = fifo_match_by_key([("A", BUY, 1, D("10"))])
    before = {key: state.to_dict() for key, state in states.items()}
    fills = [("A", SELL, 1, D("11")), ("B", BUY, 1, D("5")), ("A", BUY, 1, D("10.123456"))]

    with pytest.raises(ValueError, match="fill 2: price has more than 4 decimal places"):
        fifo_match_by_key(fills, states)

    assert {key: state.to_dict() for key, state in states.items()} == before
    with pytest.raises(ValueError, match=r"fill 0: expected \(key, side, quantity, price\)"):
        fifo_match_by_key([(BUY, 1, D("10"))], states)
    assert set(states) == {"A"}


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


class ReferenceFifo:
    """Straightforward FIFO in Decimal, signed lots, realized summed lot by lot."""

    def __init__(self):
        self.lots = deque()  # [signed quantity, Decimal price]
        self.realized = Decimal(0)
        self.cash = Decimal(0)

    def apply(self, side, quantity, price):
        price = Decimal(price)
        remaining = quantity if side == BUY else -quantity
        self.cash -= remaining * price
        realized = Decimal(0)
        while remaining and self.lots and (self.lots[0][0] > 0) != (remaining > 0):
            lot = self.lots[0]
            take = min(abs(remaining), abs(lot[0]))
            if lot[0] > 0:  # a sell closing a long lot
                realized += (price - lot[1]) * take
                lot[0] -= take
                remaining += take
            else:  # a buy covering a short lot
                realized += (lot[1] - price) * take
                lot[0] += take
                remaining -= take
            if lot[0] == 0:
                self.lots.popleft()
        if remaining:
            self.lots.append([remaining, price])
        self.realized += realized
        return realized

    @property
    def net(self):
        return sum(q for q, _ in self.lots)

    def unrealized(self, last):
        return sum(((last - p) * q for q, p in self.lots), Decimal(0))

    def average(self):
        qty = abs(self.net)
        if not qty:
            return Decimal(0)
        cost = sum(abs(q) * p for q, p in self.lots)
        return (cost / qty).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)


tick_prices = st.integers(min_value=1, max_value=200_000).map(lambda n: Decimal(n) * Decimal("0.05"))
fine_prices = st.integers(min_value=0, max_value=100_000_000).map(lambda n: Decimal(n).scaleb(-4))
prices = st.one_of(tick_prices, fine_prices)
fills_strategy = st.lists(
    st.tuples(st.sampled_from([BUY, SELL]), st.integers(min_value=1, max_value=500), prices), max_size=60
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


@PROPERTY_SETTINGS
@given(fills=fills_strategy, last=prices)
def test_property_realized_plus_unrealized_equals_cash_flow_plus_marked_position(fills, last):
    state = fifo_match(fills)
    total = state.realized_pnl + state.unrealized_pnl(last)
    with localcontext() as ctx:
        ctx.prec = 60
        assert total == state.cash_flow + state.net_quantity * last
    assert total == state.total_pnl(last)


@PROPERTY_SETTINGS
@given(fills=fills_strategy)
def test_property_net_quantity_is_bought_minus_sold(fills):
    state = fifo_match(fills)
    bought = sum(q for side, q, _ in fills if side == BUY)
    sold = sum(q for side, q, _ in fills if side == SELL)
    assert state.net_quantity == bought - sold


@PROPERTY_SETTINGS
@given(fills=fills_strategy)
def test_property_open_lots_sum_to_net_quantity_and_are_all_on_one_side(fills):
    state = fifo_match(fills)
    assert all(q > 0 for q, _ in state.lots)
    assert sum(q for q, _ in state.lots) == abs(state.net_quantity)
    if state.is_flat:
        assert state.lots == []
    reference = ReferenceFifo()
    for fill in fills:
        reference.apply(*fill)
    assert all((q > 0) == (state.net_quantity > 0) for q, _ in reference.lots)


@PROPERTY_SETTINGS
@given(fills=fills_strategy, cut=st.integers(min_value=0, max_value=60))
def test_property_two_halves_with_a_dict_round_trip_give_the_same_state(fills, cut):
    cut = min(cut, len(fills))
    first = fifo_match(fills[:cut])
    resumed = PositionState.from_dict(json.loads(json.dumps(first.to_dict())))
    resumed.apply_many(fills[cut:])

    whole = fifo_match(fills)
    assert resumed == whole
    assert resumed.to_dict() == whole.to_dict()


@PROPERTY_SETTINGS
@given(fills=fills_strategy, last=prices)
def test_property_integer_fast_path_agrees_exactly_with_a_pure_decimal_reference(fills, last):
    with localcontext() as ctx:
        ctx.prec = 60
        reference = ReferenceFifo()
        state = PositionState()
        for fill in fills:
            assert state.apply(*fill) == reference.apply(*fill)
        assert state.realized_pnl == reference.realized
        assert state.cash_flow == reference.cash
        assert state.net_quantity == reference.net
        assert state.lots == [(abs(q), p) for q, p in reference.lots]
        assert state.unrealized_pnl(last) == reference.unrealized(last)
        assert state.average_price == reference.average()

    batch = fifo_match(fills)
    assert batch == state
    keyed = fifo_match_by_key([("k", *fill) for fill in fills])
    assert keyed.get("k", PositionState()) == state


keyed_fills_strategy = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", ("C", "MIS")]),
        st.sampled_from([BUY, SELL]),
        st.integers(min_value=1, max_value=500),
        prices,
    ),
    max_size=80,
)


@PROPERTY_SETTINGS
@given(fills=keyed_fills_strategy, cut=st.integers(min_value=0, max_value=80))
def test_property_interleaved_keys_match_each_key_alone_also_when_resumed_from_dicts(fills, cut):
    cut = min(cut, len(fills))
    saved = {key: state.to_dict() for key, state in fifo_match_by_key(fills[:cut]).items()}
    resumed = fifo_match_by_key(fills[cut:], {key: PositionState.from_dict(data) for key, data in saved.items()})

    whole = fifo_match_by_key(fills)
    assert resumed == whole
    for key, state in whole.items():
        own = [fill[1:] for fill in fills if fill[0] == key]
        reference = ReferenceFifo()
        for fill in own:
            reference.apply(*fill)
        assert state == fifo_match(own)
        assert state.realized_pnl == reference.realized
        assert state.lots == [(abs(q), p) for q, p in reference.lots]


def test_fifo_match_by_key_rejects_an_unhashable_key():
    with pytest.raises(ValueError, match="fill 1: key must be hashable"):
        fifo_match_by_key([("A", BUY, 1, D("1")), (["A"], BUY, 1, D("1"))])
