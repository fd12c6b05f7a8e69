"""Many orders of many clients placed in one transaction (``engine.orders_place_many``): each is
judged exactly as ``order_place`` judges it, one after another, and the whole is written or not at all."""

import random
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection, transaction

from brokers.paper import engine
from brokers.paper.models import PaperClient, PaperOrder, PaperTrade

D = Decimal
Status = PaperOrder.Status


def quote(symbol, last):
    last = D(last)
    engine.market_set(exchange="NSE", tradingsymbol=symbol, last_price=last, bid=last - D("0.1"), ask=last + D("0.1"))


@pytest.fixture
def market(paper_market):
    quote("INFY", "1500")
    quote("TCS", "3100")


def clients(prefix: str, n: int, cash: str) -> list[PaperClient]:
    made = []
    for i in range(n):
        client = engine.client_get_or_create(user_id=f"{prefix}{i}")
        PaperClient.objects.filter(pk=client.pk).update(cash=D(cash))
        client.refresh_from_db()
        made.append(client)
    return made


def random_orders(rng: random.Random, n: int, clients_n: int) -> list[tuple[int, dict]]:
    """(client index, terms): every kind of order, some refused by the funds, the holdings, the
    price band or the tick size."""
    last = {"INFY": D("1500"), "TCS": D("3100")}
    orders = []
    for _ in range(n):
        symbol = rng.choice(["INFY", "TCS"])
        side = rng.choice(["BUY", "SELL"])
        order_type = rng.choice(["MARKET", "LIMIT", "LIMIT", "SL", "SL-M"])
        price = trigger = None
        if order_type in ("LIMIT", "SL"):
            price = last[symbol] + D(rng.choice(["-30", "-0.5", "0", "0.5", "30", "0.05", "900"]))
        if order_type in ("SL", "SL-M"):
            trigger = last[symbol] + (D("5") if side == "BUY" else D("-5"))
            if order_type == "SL":
                price = trigger + (D("1") if side == "BUY" else D("-1"))
        terms = {
            "exchange": "NSE",
            "tradingsymbol": symbol,
            "transaction_type": side,
            "order_type": order_type,
            "quantity": rng.choice([1, 2, 5, 20, 60]),
            "product": rng.choice(["CNC", "MIS"]),
            "price": price,
            "trigger_price": trigger,
            "tag": f"T{len(orders)}",
        }
        orders.append((rng.randrange(clients_n), terms))
    return orders


def outcome(result) -> tuple:
    if isinstance(result, engine.ExchangeError):
        return ("error", type(result).__name__, result.message)
    order = PaperOrder.objects.get(pk=result.pk)  # as written
    return (
        order.tag,
        order.status,
        order.status_message,
        order.filled_quantity,
        order.average_price,
        order.uncovered_quantity,
        order.price,
        order.trigger_price,
        list(order.trades.values_list("quantity", "price")),
    )


@pytest.mark.parametrize("seed", range(6))
def test_placed_together_each_order_is_judged_as_if_placed_alone_one_after_another(market, seed):
    rng = random.Random(seed)
    alone, together = clients(f"A{seed}-", 3, "150000"), clients(f"B{seed}-", 3, "150000")
    for client in alone + together:  # some shares held already
        engine.order_place(
            client=client, exchange="NSE", tradingsymbol="INFY", transaction_type="BUY",
            order_type="MARKET", quantity=10, product="CNC",
        )  # fmt: skip
    orders = random_orders(rng, 40, 3)

    expected = []
    for k, terms in orders:
        try:
            expected.append(outcome(engine.order_place(client=alone[k], **terms)))
        except engine.ExchangeError as error:
            expected.append(outcome(error))
    tokens = [engine.session_open(client=client)[0] for client in together]
    results = engine.orders_place_many([engine.Placement(access_token=tokens[k], **terms) for k, terms in orders])

    assert [outcome(result) for result in results] == expected
    kinds = {"error" if o[0] == "error" else o[1] for o in expected}
    assert {Status.COMPLETE, Status.REJECTED, Status.OPEN, "error"} <= kinds  # the mix the test is for
    for a, b in zip(alone, together, strict=True):
        a.refresh_from_db()
        b.refresh_from_db()
        assert b.cash == a.cash
        assert engine._blocked_funds(b) == engine._blocked_funds(a)


def test_a_client_with_call_knobs_is_left_to_be_placed_alone_and_bad_sessions_or_symbols_are_refused(market):
    plain, knobbed = clients("K", 2, "1000000")
    PaperClient.objects.filter(pk=knobbed.pk).update(latency_ms=1)
    token, knobbed_token = engine.session_open(client=plain)[0], engine.session_open(client=knobbed)[0]
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "MARKET",
             "quantity": 1, "product": "MIS"}  # fmt: skip

    results = engine.orders_place_many(
        [
            engine.Placement(access_token=knobbed_token, **terms, tag="KNOB"),
            engine.Placement(access_token="expired-or-made-up", **terms, tag="NOSESSION"),
            engine.Placement(access_token=token, **{**terms, "tradingsymbol": "NOSUCH"}, tag="NOSYMBOL"),
            engine.Placement(access_token=token, **{**terms, "tradingsymbol": "NOSUCH"}, tag="T" * 21),
            engine.Placement(access_token=token, **terms, tag="PLAIN"),
        ]
    )

    assert results[0] is None
    assert isinstance(results[1], engine.TokenException)
    assert isinstance(results[2], engine.InputException) and "NOSUCH" in results[2].message
    assert "at most 20 characters" in results[3].message  # as order_place tells it: the tag first
    assert results[4].status == Status.COMPLETE
    assert list(PaperOrder.objects.values_list("tag", flat=True)) == ["PLAIN"]


def test_a_failure_of_the_whole_writes_nothing(market, monkeypatch):
    [client] = clients("F", 1, "1000000")
    token = engine.session_open(client=client)[0]

    def broken(paid):  # after the orders and fills were inserted
        raise RuntimeError("the database went away")

    monkeypatch.setattr(engine, "_cash_paid", broken)
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "MARKET",
             "quantity": 3, "product": "MIS"}  # fmt: skip
    with pytest.raises(RuntimeError):
        engine.orders_place_many([engine.Placement(access_token=token, **terms, tag=f"W{i}") for i in range(3)])
    assert not PaperOrder.objects.exists() and not PaperTrade.objects.exists()
    client.refresh_from_db()
    assert client.cash == D("1000000")


@pytest.mark.django_db(transaction=True)
def test_the_funds_are_read_once_the_client_is_locked_so_a_placement_committed_meanwhile_counts(paper_market):
    """A single placement holds the client's row; the batch waits for it and then sees its order's
    blocked funds, so the two cannot spend the same cash."""
    if connection.vendor != "mysql":
        pytest.skip("row locks: MariaDB")
    quote("INFY", "1500")
    [client] = clients("L", 1, "20000")
    token = engine.session_open(client=client)[0]
    held, release, results = threading.Event(), threading.Event(), []
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "LIMIT",
             "product": "MIS", "price": D("1400")}  # fmt: skip

    def single():
        try:
            with transaction.atomic():
                engine._client_locked(client.pk)
                held.set()
                release.wait(10)
                engine.order_place(client=client, **terms, quantity=10, tag="FIRST")  # blocks 14,000
        finally:
            connection.close()

    def batch():
        try:
            results.extend(engine.orders_place_many([engine.Placement(access_token=token, **terms, quantity=5)]))
        finally:
            connection.close()

    first = threading.Thread(target=single)
    first.start()
    assert held.wait(10)
    second = threading.Thread(target=batch)
    second.start()
    time.sleep(0.3)  # the batch now waits for the client's row
    assert not results
    release.set()
    first.join()
    second.join()
    [order] = results
    assert order.status == Status.REJECTED and "available margin is 6000.00" in order.status_message


def test_a_batch_whose_clients_all_have_call_knobs_leaves_each_to_be_placed_alone(market):
    a, b = clients("KN", 2, "1000000")
    PaperClient.objects.filter(pk__in=[a.pk, b.pk]).update(latency_ms=1)
    tokens = [engine.session_open(client=c)[0] for c in (a, b)]
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "MARKET",
             "quantity": 1, "product": "MIS"}  # fmt: skip
    placements = [engine.Placement(access_token=t, **terms, tag=f"K{i}") for i, t in enumerate(tokens)]
    assert engine.orders_place_many(placements) == [None, None]
    assert not PaperOrder.objects.exists()


def _rule_cases():
    """More of order_place's rules than the random mix meets: CNC buy, sell and oversell, SL-M
    uncovered sell, IOC, futures lots, a tag too long, a variety not supported, funds short."""
    fut = {"exchange": "NFO", "tradingsymbol": "NIFTY26DECFUT"}
    infy = {"exchange": "NSE", "tradingsymbol": "INFY"}
    cases = []
    for k in (0, 1):
        cases += [
            (k, {**infy, "transaction_type": "BUY", "order_type": "MARKET", "quantity": 5, "product": "CNC"}),
            (k, {**infy, "transaction_type": "SELL", "order_type": "MARKET", "quantity": 5, "product": "CNC"}),
            (k, {**infy, "transaction_type": "SELL", "order_type": "MARKET", "quantity": 1, "product": "CNC"}),
            (k, {**infy, "transaction_type": "SELL", "order_type": "SL-M", "quantity": 7, "product": "MIS",
                 "trigger_price": D("1490")}),
            (k, {**infy, "transaction_type": "BUY", "order_type": "LIMIT", "quantity": 3, "product": "MIS",
                 "price": D("1480.05"), "validity": "IOC"}),
            (k, {**fut, "transaction_type": "BUY", "order_type": "MARKET", "quantity": 75, "product": "NRML"}),
            (k, {**fut, "transaction_type": "SELL", "order_type": "LIMIT", "quantity": 150, "product": "NRML",
                 "price": D("26000")}),
            (k, {**infy, "transaction_type": "BUY", "order_type": "MARKET", "quantity": 1, "product": "MIS",
                 "tag": "X" * 21}),
            (k, {**infy, "transaction_type": "BUY", "order_type": "MARKET", "quantity": 1, "product": "MIS",
                 "variety": "amo"}),
            (k, {**infy, "transaction_type": "BUY", "order_type": "LIMIT", "quantity": 400, "product": "MIS",
                 "price": D("1499.90")}),
            (k, {**infy, "transaction_type": "BUY", "order_type": "MARKET", "quantity": 2, "product": "MIS"}),
        ]  # fmt: skip
    return cases


def test_placed_together_matches_alone_for_futures_ioc_tags_and_the_rejection_knob(market):
    engine.market_set(exchange="NFO", tradingsymbol="NIFTY26DECFUT", last_price=D("26104"),
                      bid=D("26103.9"), ask=D("26104.1"))  # fmt: skip
    alone, together = clients("DA", 2, "3000000"), clients("DB", 2, "3000000")
    PaperClient.objects.filter(pk__in=[alone[1].pk, together[1].pk]).update(rejection_rate=0.5)
    for client in alone + together:
        client.refresh_from_db()
    cases = [(k, {"tag": f"T{i}", **terms}) for i, (k, terms) in enumerate(_rule_cases())]
    expected, rng = [], random.Random(7)
    for k, terms in cases:
        try:
            expected.append(outcome(engine.order_place(client=alone[k], **terms, rng=rng)))
        except engine.ExchangeError as error:
            expected.append(outcome(error))
    tokens = [engine.session_open(client=client)[0] for client in together]
    placements = [engine.Placement(access_token=tokens[k], **terms) for k, terms in cases]
    results = engine.orders_place_many(placements, rng=random.Random(7))

    assert [outcome(result) for result in results] == expected
    for a, b in zip(alone, together, strict=True):
        a.refresh_from_db()
        b.refresh_from_db()
        assert (b.cash, engine._blocked_funds(b)) == (a.cash, engine._blocked_funds(a))


def test_a_batchs_own_placements_are_told_as_able_to_wait_others_at_once(
    market, monkeypatch, django_capture_on_commit_callbacks
):
    """A burst's own placements may wait for the burst to be sent (``background.Batch``); a single
    placement (a resting stop-loss's fill, too) is told at once."""
    from brokers.paper import adapter

    told = []
    monkeypatch.setattr(
        adapter, "order_announce", lambda user_id, state, fills, can_wait=False: told.append((state.tag, can_wait))
    )
    [client] = clients("W", 1, "1000000")
    token = engine.session_open(client=client)[0]
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "MARKET",
             "quantity": 1, "product": "MIS"}  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        engine.order_place(client=client, **terms, tag="ALONE")
        engine.orders_place_many([engine.Placement(access_token=token, **terms, tag=f"B{i}") for i in range(2)])
    assert told == [("ALONE", False), ("B0", True), ("B1", True)]


def test_an_ioc_that_does_not_fill_is_cancelled_together_as_alone(market):
    alone, together = clients("IA", 1, "1000000")[0], clients("IB", 1, "1000000")[0]
    terms = {"exchange": "NSE", "tradingsymbol": "INFY", "transaction_type": "BUY", "order_type": "LIMIT",
             "quantity": 3, "product": "MIS", "price": D("1480"), "validity": "IOC", "tag": "IOC"}  # fmt: skip
    expected = outcome(engine.order_place(client=alone, **terms))
    token = engine.session_open(client=together)[0]
    (result,) = engine.orders_place_many([engine.Placement(access_token=token, **terms)])
    assert outcome(result) == expected and expected[1] == Status.CANCELLED
    assert engine._blocked_funds(together) == engine._blocked_funds(alone) == 0
