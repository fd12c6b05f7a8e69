"""Recording fills from the broker and keeping positions by FIFO, once each."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from brokers.base import BrokerTrade
from brokers.client import AccountBroker
from orders.models import Order
from orders.tests.factories import place
from portfolio import services
from portfolio.models import PnlSnapshot, Position, Trade

D = Decimal


def fill(trade_id, side, quantity, price, *, symbol="INFY", seconds=0, product="MIS"):
    return BrokerTrade(
        trade_id=trade_id,
        broker_order_id=f"o{trade_id}",
        exchange="NSE",
        tradingsymbol=symbol,
        side=side,
        product=product,
        quantity=quantity,
        price=D(price),
        filled_at=timezone.now() + timedelta(seconds=seconds),
    )


def test_fills_make_a_fifo_position_once(account):
    fills = [
        fill("1", "BUY", 10, "100"),
        fill("2", "BUY", 10, "110", seconds=1),
        fill("3", "SELL", 15, "120", seconds=2),
    ]
    assert len(services.trades_record(account=account, broker_trades=fills)) == 3
    assert services.trades_record(account=account, broker_trades=fills) == []  # a second cycle: nothing new
    position = Position.objects.get(account=account)
    # FIFO: 10 @100 and 5 @110 closed at 120 -> 200 + 50; 5 @110 left open.
    assert position.net_quantity == 5 and position.realized_pnl == D("250")
    assert position.average_price == D("110")
    assert Trade.objects.count() == 3


def test_new_fills_extend_the_position_without_replaying(account):
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100")])
    services.trades_record(
        account=account, broker_trades=[fill("1", "BUY", 10, "100"), fill("2", "SELL", 20, "90", seconds=1)]
    )
    position = Position.objects.get(account=account)
    assert position.net_quantity == -10 and position.realized_pnl == D("-100") and position.average_price == D("90")


def test_marking_and_snapshots(account):
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100")])
    services.positions_mark(account=account, last_prices={("NSE", "INFY"): D("103.5")})
    position = Position.objects.get(account=account)
    assert position.unrealized_pnl == D("35") and position.last_price == D("103.5")
    snapshot = services.pnl_snapshot(account=account)
    assert snapshot.total == D("35") and PnlSnapshot.objects.count() == 1


def test_a_mark_from_positions_read_before_a_fill_values_the_lots_as_they_are_now(account):
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100")])
    read_by_the_cycle = list(Position.objects.filter(account=account).select_related("instrument"))
    services.trades_record(account=account, broker_trades=[fill("2", "SELL", 10, "110", seconds=1)])  # fast path
    services.positions_mark(account=account, last_prices={("NSE", "INFY"): D("120")}, positions=read_by_the_cycle)
    position = Position.objects.get(account=account)
    assert position.net_quantity == 0 and position.unrealized_pnl == 0 and position.last_price == D("120")
    assert services.pnl_snapshot(account=account).total == D("100")  # realized 10 x (110 - 100), nothing open


def test_paper_fills_link_to_their_orders(trader, account):
    order = place(trader, account, quantity=3)
    created = services.trades_record(account=account, broker_trades=AccountBroker(account).trades())
    assert [trade.order_id for trade in created] == [order.pk]
    assert Position.objects.get(account=account).net_quantity == 3


def test_many_accounts_fills_recorded_together_each_to_its_own_positions(account, other_trader):
    from accounts.tests.factories import make_broker_account

    theirs = make_broker_account(other_trader, broker="paper", client_id="PAPER-O2", label="Theirs")
    # Broker trade ids are unique per order only: the same ids on two accounts are two fills each.
    mine = [fill("1", "BUY", 10, "100"), fill("2", "SELL", 4, "120", seconds=1)]
    their = [fill("1", "SELL", 5, "200"), fill("3", "BUY", 2, "10", symbol="TCS")]
    applied = services.trades_record_many([(account, mine), (theirs, their), (account, [])])
    assert {pk: sorted(t.broker_trade_id for t in trades) for pk, trades in applied.items()} == {
        account.pk: ["1", "2"],
        theirs.pk: ["1", "3"],
    }
    assert all(t.account_id == pk for pk, trades in applied.items() for t in trades)
    position = Position.objects.get(account=account)
    assert position.net_quantity == 6 and position.realized_pnl == D("80")  # 4 x (120 - 100)
    assert Position.objects.get(account=theirs, instrument__tradingsymbol="INFY").net_quantity == -5
    assert Position.objects.get(account=theirs, instrument__tradingsymbol="TCS").net_quantity == 2
    assert not Position.objects.filter(account=account, instrument__tradingsymbol="TCS").exists()
    # A second cycle, with a fill the fast path recorded meanwhile: nothing twice; and their new
    # fill "2" is theirs to record, though my "2" is recorded.
    services.trades_record(account=theirs, broker_trades=[fill("4", "BUY", 5, "190", seconds=2)], fresh=True)
    later = [*their, fill("4", "BUY", 5, "190", seconds=2), fill("2", "BUY", 1, "195", seconds=3)]
    again = services.trades_record_many([(account, mine), (theirs, later)])
    assert {pk: [t.broker_trade_id for t in trades] for pk, trades in again.items()} == {theirs.pk: ["2"]}
    assert Trade.objects.filter(account=account).count() == 2 and Trade.objects.filter(account=theirs).count() == 4
    assert Position.objects.get(account=theirs, instrument__tradingsymbol="INFY").net_quantity == 1
    assert services.trades_record_many([(account, mine), (theirs, later)]) == {}


def test_a_fill_without_a_tag_is_not_linked_to_an_order_still_without_its_broker_id(trader, account):
    # Our order is found by the tag of its own fill before it has its broker id; a fill of an order
    # placed by hand at the broker (no tag, an id we do not know) in the same batch is nobody's.
    ours = place(trader, account, quantity=1)
    Order.objects.filter(pk=ours.pk).update(broker_order_id=None)
    mine = replace(fill("t-ours", "BUY", 1, "100"), broker_order_id="B-OURS", order_tag=ours.reference)
    by_hand = replace(fill("t-hand", "BUY", 1, "100"), broker_order_id="B-HAND")
    services.trades_record_many([(account, [mine, by_hand])], fresh=True)
    linked = dict(Trade.objects.filter(broker_trade_id__startswith="t-").values_list("broker_trade_id", "order_id"))
    assert linked == {"t-ours": ours.pk, "t-hand": None}


def test_one_trade_id_in_two_orders_is_two_fills(account):
    # Kite's trade ids are the exchange's trade numbers: another exchange, or another day, can
    # repeat one within an account. Each is a fill of its own order; each is still recorded once.
    first = fill("7", "BUY", 10, "100")
    again = replace(first, broker_order_id="o-next-day", side="SELL", quantity=4, price=D("120"))
    again = replace(again, filled_at=first.filled_at + timedelta(seconds=1))
    assert len(services.trades_record(account=account, broker_trades=[first])) == 1
    assert len(services.trades_record(account=account, broker_trades=[first, again], fresh=True)) == 1
    assert services.trades_record(account=account, broker_trades=[first, again]) == []
    assert services.trades_record(account=account, broker_trades=[again], fresh=True) == []
    assert sorted(Trade.objects.values_list("broker_order_id", "broker_trade_id")) == [("o-next-day", "7"), ("o7", "7")]
    position = Position.objects.get(account=account)
    assert position.net_quantity == 6 and position.realized_pnl == D("80")  # 4 x (120 - 100)


def test_a_fresh_fill_recorded_meanwhile_is_refused_by_its_key_and_nothing_else_changes(account):
    # The monitoring run got the fill in first; the fast path, inserting without a look, is refused
    # by the unique key, rolls back, and records the rest of its fills looking first.
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100")])
    applied = services.trades_record(
        account=account, broker_trades=[fill("1", "BUY", 10, "100"), fill("2", "SELL", 4, "110", seconds=1)], fresh=True
    )
    assert [t.broker_trade_id for t in applied] == ["2"]
    assert services.trades_record(account=account, broker_trades=[fill("2", "SELL", 4, "110")], fresh=True) == []
    position = Position.objects.get(account=account)
    assert Trade.objects.filter(account=account).count() == 2
    assert position.net_quantity == 6 and position.realized_pnl == D("40")


def test_fills_valued_at_the_market_value_the_instruments_other_positions_too(account):
    from brokers.models import Instrument

    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100", product="CNC")])
    Instrument.objects.filter(exchange="NSE", tradingsymbol="INFY").update(last_price=D("104"))
    services.trades_record(account=account, broker_trades=[fill("2", "BUY", 5, "101")], at_market=True)
    cnc, mis = (Position.objects.get(account=account, product=p) for p in ("CNC", "MIS"))
    assert mis.last_price == D("104") and mis.unrealized_pnl == D("15")  # 5 x (104 - 101), not at the fill's 101
    assert cnc.last_price == D("104") and cnc.unrealized_pnl == D("40")


def test_a_kite_accounts_fills_valued_at_the_market_are_not_valued_at_the_paper_exchanges_prices(trader, instruments):
    """The instruments' last prices are the paper exchange's ticker's, a random walk of its own. A
    Kite account's fills recorded at the market (its opening lots, by the monitoring run) valued
    its positions at them: a PnL from invented prices, the other product's position re-marked too,
    until a run marked them at Kite's. They keep Kite's price; a new one is valued at its fill."""
    from accounts.tests.factories import make_kite_account
    from brokers.paper import engine, feed

    kite = make_kite_account(trader, client_id="KT0001")
    services.trades_record(account=kite, broker_trades=[fill("1", "BUY", 10, "100", product="CNC")])
    services.positions_mark(account=kite, last_prices={("NSE", "INFY"): D("102")})  # Kite's, as a run marks it
    engine.market_set(exchange="NSE", tradingsymbol="INFY", last_price=D("150"))
    feed.publish_ticks()  # the paper exchange's tick
    services.trades_record(account=kite, broker_trades=[fill("2", "BUY", 5, "101")], at_market=True)
    cnc, mis = (Position.objects.get(account=kite, product=p) for p in ("CNC", "MIS"))
    assert (cnc.last_price, cnc.unrealized_pnl) == (D("102"), D("20"))  # not 150 and 500
    assert (mis.last_price, mis.unrealized_pnl) == (D("101"), D("0"))  # not 150 and 245


def test_a_fill_of_a_known_position_is_four_statements(account, django_assert_max_num_queries):
    services.trades_record(account=account, broker_trades=[fill("1", "BUY", 10, "100")])
    # Its order looked up, the position locked (with the market's price), the fill inserted, the
    # position updated; and within the test's transaction a savepoint and its release.
    with django_assert_max_num_queries(6):
        applied = services.trades_record(
            account=account, broker_trades=[fill("2", "BUY", 5, "101")], fresh=True, at_market=True
        )
    assert len(applied) == 1 and Position.objects.get(account=account).net_quantity == 15
