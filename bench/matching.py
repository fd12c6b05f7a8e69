"""Benchmark of the paper exchange's matching: the in-memory order book, then the paper adapter.

Run from the repository root:

    python bench/matching.py [--ops 1000000] [--seed 7] [--instruments 4] [--by-kind]

Prints one figure per line, ``name: value unit``; ``main()`` also returns them in a dict.

Section 1, ``bench_book``, drives ``brokers.paper.book.OrderBook`` directly and does not import
Django. The mix, over a few instruments (one book each):

* 80% adds: limit orders on both sides around each instrument's simulated market (its bid
  follows a random walk pulled back towards the day's centre; its ask is one tick above),
  mostly at or behind the touch, 10% of them crossing the spread, and 3% of the adds are
  stops (SL or SL-M) away from the market;
* 20% cancels of random live orders;
* every 100 of those, a market tick on the next instrument in turn: ``match`` with the
  walk's bid/ask and a random volume, then ``trigger`` with the last price. Triggered SL
  stops are added back as limits at their limit price (SL-M ones count as filled at market).

Timing. Every book call (add_limit, add_stop, cancel, match, trigger) is one operation and
is timed on its own with ``time.perf_counter_ns``; p50/p99 are nearest-rank percentiles of
those timings. ``book_ops_per_s`` is the number of operations divided by the wall time of
the loops that execute them, so it INCLUDES the per-op timer calls and the loop's dispatch,
but not the generation of the random operations (done ahead of each stretch between two
ticks) nor the driver's own bookkeeping of which orders are live.

A tick is about 1% of the operations and a tick's ``match`` returns tens of fills (in the
steady state every order that is not cancelled must fill), so p99 sits close to the cost of
the cheaper ticks; ``--by-kind`` prints the figures per kind of call on stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from brokers.paper.book import BUY, SELL, OrderBook  # noqa: E402

TICK_SIZE = 5  # paise
SPREAD = TICK_SIZE  # the simulated market's ask - bid
OPS_BETWEEN_TICKS = 100  # adds + cancels between two market ticks
ADD_SHARE = 0.80  # the rest are cancels
STOP_SHARE = 0.03  # of adds
CROSSING_SHARE = 0.10  # of limit adds: priced at or through the far side of the spread
DEPTH_TICKS = 2  # mean distance of a limit from the touch, in ticks (exponential, rounded down)
STEP_TICKS = 3  # the market bid moves by up to this many ticks per market tick
REVERSION_TICKS = 10  # ... and is pulled back by one tick per this many ticks away from its centre
VOLUME_RANGE = (1000, 10000)  # shares traded per side in one market tick
QUANTITY_RANGE = (1, 100)  # shares per order

ADD_LIMIT, ADD_STOP, CANCEL = 0, 1, 2


def _percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


class _Live:
    """The driver's live orders (order id and instrument), with O(1) random pick and removal.

    Parallel lists of strs and ints rather than a list of tuples, so that the driver's own
    bookkeeping does not feed the garbage collector (whose pauses would land on book calls).
    """

    __slots__ = ("ids", "instruments", "where")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.instruments: list[int] = []
        self.where: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, instrument: int, order_id: str) -> None:
        self.where[order_id] = len(self.ids)
        self.ids.append(order_id)
        self.instruments.append(instrument)

    def discard(self, order_id: str) -> None:
        index = self.where.pop(order_id, None)
        if index is None:
            return
        last_id = self.ids.pop()
        last_instrument = self.instruments.pop()
        if index < len(self.ids):
            self.ids[index] = last_id
            self.instruments[index] = last_instrument
            self.where[last_id] = index

    def pick(self, rng: random.Random) -> tuple[int, str]:
        index = rng.randrange(len(self.ids))
        return self.instruments[index], self.ids[index]


# -- section 1: the order book (no Django) --------------------------------------------------------


def bench_book(ops: int, seed: int, instruments: int = 4, by_kind: bool = False) -> dict:
    """Run ``ops`` book operations of the mix described above; return the book_* figures."""
    rng = random.Random(seed)
    books = [OrderBook() for _ in range(instruments)]
    centres = [rng.randrange(50_000, 500_000, TICK_SIZE) for _ in range(instruments)]  # Rs 500 .. Rs 5000
    bids = centres[:]  # the simulated market's bid per instrument; its ask is bid + SPREAD
    live = _Live()
    # per-op timings in ns, one list per kind of call (appending to one list costs the same)
    timings: dict[str, list[int]] = {k: [] for k in ("add_limit", "add_stop", "cancel", "match", "trigger")}
    add_limit_ns = timings["add_limit"].append
    add_stop_ns = timings["add_stop"].append
    cancel_ns = timings["cancel"].append
    match_ns = timings["match"].append
    trigger_ns = timings["trigger"].append
    clock = time.perf_counter_ns
    busy_ns = 0  # wall time of the execution loops: book calls + per-op timers + dispatch
    done = 0
    next_id = 0
    next_tick = 0

    while done < ops:
        # ---- generate the stretch of adds/cancels up to the next tick (untimed) ----
        stretch = []
        for _ in range(min(OPS_BETWEEN_TICKS, ops - done)):
            if rng.random() < ADD_SHARE or not live:
                inst = rng.randrange(instruments)
                bid = bids[inst]
                ask = bid + SPREAD
                side = BUY if rng.random() < 0.5 else SELL
                quantity = rng.randint(*QUANTITY_RANGE)
                next_id += 1
                order_id = f"o{next_id}"
                if rng.random() < STOP_SHARE:
                    # a protective stop away from the market: buy stops above the ask, sell stops below the bid
                    away = TICK_SIZE * rng.randint(1, 20)
                    trigger = ask + away if side == BUY else bid - away
                    slack = TICK_SIZE * rng.randint(0, 4)
                    limit = None if rng.random() < 0.5 else (trigger + slack if side == BUY else trigger - slack)
                    stretch.append((ADD_STOP, inst, order_id, side, trigger, quantity, limit))
                else:
                    depth = TICK_SIZE * int(rng.expovariate(1 / DEPTH_TICKS))
                    crossing = rng.random() < CROSSING_SHARE
                    if side == BUY:
                        price = ask + depth if crossing else bid - depth
                    else:
                        price = bid - depth if crossing else ask + depth
                    stretch.append((ADD_LIMIT, inst, order_id, side, price, quantity, None))
                live.add(inst, order_id)
            else:
                inst, order_id = live.pick(rng)
                live.discard(order_id)
                stretch.append((CANCEL, inst, order_id, None, None, None, None))

        # ---- execute it, timing each book call ----
        start = clock()
        for kind, inst, order_id, side, price, quantity, limit in stretch:
            book = books[inst]
            if kind == ADD_LIMIT:
                t0 = clock()
                book.add_limit(order_id, side, price, quantity)
                add_limit_ns(clock() - t0)
            elif kind == CANCEL:
                t0 = clock()
                book.cancel(order_id)
                cancel_ns(clock() - t0)
            else:
                t0 = clock()
                book.add_stop(order_id, side, price, quantity, limit)
                add_stop_ns(clock() - t0)
        busy_ns += clock() - start
        done += len(stretch)
        if done >= ops:
            break

        # ---- a market tick on the next instrument in turn ----
        inst = next_tick
        next_tick = (next_tick + 1) % instruments
        # random walk, pulled back towards the day's centre so that prices come back to resting orders
        pull = round((bids[inst] - centres[inst]) / (TICK_SIZE * REVERSION_TICKS))
        bids[inst] += TICK_SIZE * (rng.randint(-STEP_TICKS, STEP_TICKS) - pull)
        bid = bids[inst]
        ask = bid + SPREAD
        volume = rng.randint(*VOLUME_RANGE)
        last = bid if rng.random() < 0.5 else ask
        book = books[inst]

        start = clock()
        t0 = clock()
        fills = book.match(bid=bid, ask=ask, volume=volume)
        match_ns(clock() - t0)
        t0 = clock()
        triggered = book.trigger(last)
        trigger_ns(clock() - t0)
        done += 2
        for order_id, side, quantity, limit in triggered:
            if limit is not None:  # SL: becomes a LIMIT order at its limit price
                t0 = clock()
                book.add_limit(order_id, side, limit, quantity)
                add_limit_ns(clock() - t0)
                done += 1
        busy_ns += clock() - start

        # driver bookkeeping (untimed): filled orders and SL-M stops are no longer live
        for fill in fills:
            if fill.order_id not in book:
                live.discard(fill.order_id)
        for order_id, _side, _quantity, limit in triggered:
            if limit is None:
                live.discard(order_id)
        fills = triggered = None  # free them here, not inside the next timed call

    every = sorted(t for per_kind in timings.values() for t in per_kind)
    if by_kind:
        for kind, per_kind in timings.items():
            per_kind.sort()
            print(
                f"# {kind:9s} n={len(per_kind):8d} p50={_percentile(per_kind, 0.5) / 1000:7.2f} us"
                f" p99={_percentile(per_kind, 0.99) / 1000:7.2f} us",
                file=sys.stderr,
            )
        print(f"# resting/pending orders at the end: {[len(book) for book in books]}", file=sys.stderr)
    return {
        "book_ops_per_s": int(len(every) / (busy_ns / 1e9)) if busy_ns else 0,
        "book_op_p50_us": _percentile(every, 0.50) / 1000,
        "book_op_p99_us": _percentile(every, 0.99) / 1000,
    }


# -- section 2: the paper adapter (needs Django; import and set it up inside its function) --------


def bench_adapter(orders: int, seed: int) -> dict:
    """Orders per second through the ``paper`` adapter into the exchange, database writes included.

    Uses ``DATABASE_URL`` when set (e.g. MariaDB), else a fresh SQLite file under ``var/``.
    A mix of MARKET orders (filled on arrival: order, trade, cash) and resting LIMIT orders,
    placed one after another by one client, as one worker would.
    """
    import os

    root = Path(__file__).resolve().parent.parent
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingplatform.settings")
    os.environ.setdefault("DEBUG", "true")
    if not os.environ.get("DATABASE_URL"):
        db = root / "var" / "bench_matching.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    import django

    django.setup()
    from decimal import Decimal

    from django.core.management import call_command

    from brokers.base import OrderRequest
    from brokers.paper import engine
    from brokers.paper.adapter import PaperBroker
    from brokers.paper.models import PaperClient

    call_command("migrate", verbosity=0)
    client_id = f"BENCH-{seed}-{time.time_ns()}"
    broker = PaperBroker(client_id=client_id)
    broker.login()
    PaperClient.objects.filter(user_id=client_id).update(cash=Decimal("1e12"))
    rng = random.Random(seed)
    symbols = ["INFY", "TCS", "RELIANCE", "SBIN", "HDFCBANK"]
    last = {s: engine.instrument_lookup("NSE", s).last_price for s in symbols}
    requests = []
    for n in range(orders):
        symbol = rng.choice(symbols)
        side = rng.choice(("BUY", "SELL"))
        if rng.random() < 0.5:
            requests.append(OrderRequest("NSE", symbol, side, 1, "MARKET", "MIS", tag=f"b{n}"))
        else:
            away = Decimal(rng.randint(5, 50)) / 10
            price = last[symbol] - away if side == "BUY" else last[symbol] + away
            requests.append(OrderRequest("NSE", symbol, side, 1, "LIMIT", "MIS", tag=f"b{n}", price=price))
    started = time.perf_counter()
    for request in requests:
        broker.place_order(request)
    elapsed = time.perf_counter() - started
    return {"paper_adapter_orders_per_s": int(orders / elapsed)}


UNITS = {  # figure name -> (unit, format)
    "book_ops_per_s": ("1/s", "{:d}"),
    "book_op_p50_us": ("us", "{:.2f}"),
    "book_op_p99_us": ("us", "{:.2f}"),
    "paper_adapter_orders_per_s": ("1/s", "{:d}"),
}


def main(argv=None) -> dict:
    """Run the benchmark sections, print one ``name: value unit`` line per figure, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="book operations to run (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--instruments", type=int, default=4, help="instruments, one book each (default 4)")
    parser.add_argument("--by-kind", action="store_true", help="also print per-call-kind figures on stderr")
    parser.add_argument(
        "--adapter-orders", type=int, default=2000, help="orders through the paper adapter (default 2000)"
    )
    args = parser.parse_args(argv)

    figures: dict = {}
    figures.update(bench_book(args.ops, args.seed, args.instruments, by_kind=args.by_kind))
    if args.adapter_orders:
        figures.update(bench_adapter(args.adapter_orders, args.seed))

    for name, value in figures.items():
        unit, fmt = UNITS.get(name, ("", "{}"))
        print(f"{name}: {fmt.format(value)} {unit}".rstrip())
    return figures


if __name__ == "__main__":
    main()
