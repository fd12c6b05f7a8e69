"""Benchmark of the paper exchange's matching: the in-memory order book, then (later) the adapter.

Run from the repository root:

    python bench/matching.py [--ops 1000000] [--seed 7] [--instruments 4]

Section 1 (this file's ``bench_book``) drives ``brokers.paper.book.OrderBook`` directly, with no
Django: a mix of 80% adds (limit orders around a random-walk mid price on both sides, some of
them crossing the spread, a few stops), 20% cancels of random live orders, and a market tick
(``match`` with a random-walk bid/ask and a volume, then ``trigger``) every ~100 operations.
Triggered SL stops are re-added as limits (SL-M ones are taken as filled at market).

Each book call is timed on its own with ``time.perf_counter_ns``; p50/p99 come from those
timings. Throughput (``book_ops_per_s``) is measured over the whole execution loop, that is
including the per-op timer calls and the loop's dispatch, but not the generation of the random
operations (done ahead of each stretch between ticks) nor the driver's own bookkeeping of which
orders are live. It is therefore a slightly conservative figure for the book itself.

Output, one figure per line, ``name: value unit``.
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
CROSSING_SHARE = 0.10  # of limit adds: priced through the spread
DEPTH_TICKS = 2  # mean distance of a limit from the touch, in ticks (exponential, rounded down)
STEP_TICKS = 3  # the market bid moves by up to this many ticks per market tick
REVERSION_TICKS = 10  # ... and is pulled back by one tick per this many ticks away from its centre
VOLUME_RANGE = (1000, 10000)  # shares traded per side in one market tick

ADD_LIMIT, ADD_STOP, CANCEL = 0, 1, 2


def _percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]


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


def bench_book(ops: int, seed: int, instruments: int = 4) -> dict:
    rng = random.Random(seed)
    books = [OrderBook() for _ in range(instruments)]
    centres = [rng.randrange(50_000, 500_000, TICK_SIZE) for _ in range(instruments)]  # Rs 500 .. Rs 5000
    bids = centres[:]  # the simulated market's bid per instrument; its ask is bid + SPREAD
    live = _Live()
    timings: list[int] = []
    record = timings.append
    clock = time.perf_counter_ns
    busy_ns = 0  # time spent in the execution loops (book calls + timers + dispatch)
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
                sign = 1 if side == BUY else -1  # away from the market, for stops
                quantity = rng.randint(1, 100)
                next_id += 1
                order_id = f"o{next_id}"
                if rng.random() < STOP_SHARE:
                    # a protective stop away from the market: buy stops above, sell stops below
                    trigger = (ask if side == BUY else bid) + sign * TICK_SIZE * rng.randint(1, 20)
                    limit = None if rng.random() < 0.5 else trigger + sign * TICK_SIZE * rng.randint(0, 4)
                    stretch.append((ADD_STOP, inst, order_id, side, trigger, quantity, limit))
                else:
                    depth = TICK_SIZE * int(rng.expovariate(1 / DEPTH_TICKS))
                    if side == BUY:
                        # at or through the ask (crossing), else at or below the bid
                        price = ask + depth if rng.random() < CROSSING_SHARE else bid - depth
                    else:
                        price = bid - depth if rng.random() < CROSSING_SHARE else ask + depth
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
                record(clock() - t0)
            elif kind == CANCEL:
                t0 = clock()
                book.cancel(order_id)
                record(clock() - t0)
            else:
                t0 = clock()
                book.add_stop(order_id, side, price, quantity, limit)
                record(clock() - t0)
        busy_ns += clock() - start
        done += len(stretch)
        if done >= ops:
            break

        # ---- a market tick on the next instrument (round robin) ----
        inst = next_tick
        next_tick = (next_tick + 1) % instruments
        # random walk, pulled back towards the day's centre so that prices revisit resting orders
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
        record(clock() - t0)
        t0 = clock()
        triggered = book.trigger(last)
        record(clock() - t0)
        done += 2
        for order_id, side, quantity, limit in triggered:
            if limit is not None:  # SL: becomes a LIMIT order at its limit price
                t0 = clock()
                book.add_limit(order_id, side, limit, quantity)
                record(clock() - t0)
                done += 1
        busy_ns += clock() - start

        # driver bookkeeping (untimed): filled orders and SL-M stops are no longer live
        for fill in fills:
            if fill.order_id not in book:
                live.discard(fill.order_id)
        for order_id, _side, _quantity, limit in triggered:
            if limit is None:
                live.discard(order_id)

    timings.sort()
    return {
        "book_ops_per_s": int(len(timings) / (busy_ns / 1e9)) if busy_ns else 0,
        "book_op_p50_us": _percentile(timings, 0.50) / 1000,
        "book_op_p99_us": _percentile(timings, 0.99) / 1000,
    }


# -- section 2: the paper adapter (needs Django; to be added) -------------------------------------


UNITS = {
    "book_ops_per_s": ("1/s", "{:d}"),
    "book_op_p50_us": ("us", "{:.2f}"),
    "book_op_p99_us": ("us", "{:.2f}"),
}


def main(argv=None) -> dict:
    """Run the benchmark sections, print one ``name: value unit`` line per figure, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000, help="book operations to run (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--instruments", type=int, default=4, help="instruments (one book each, default 4)")
    args = parser.parse_args(argv)

    figures: dict = {}
    figures.update(bench_book(args.ops, args.seed, args.instruments))
    # section 2 (Django adapter) goes here: figures.update(bench_adapter(...))

    for name, value in figures.items():
        unit, fmt = UNITS.get(name, ("", "{}"))
        print(f"{name}: {fmt.format(value)} {unit}".rstrip())
    return figures


if __name__ == "__main__":
    main()
