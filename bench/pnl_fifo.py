"""Benchmark of the FIFO lot-matching PnL engine (``portfolio.fifo``); does not import Django.

Run from the repository root:

    python bench/pnl_fifo.py [--fills 1000000] [--seed 7] [--instruments 100]

Prints ``fifo_1m_fills_s: <seconds> s`` (the name is fixed, whatever ``--fills`` is) after a few
``# ...`` context lines.

The mix: ``--instruments`` instruments (100 by default), picked per fill with Zipf-like weights
(liquid names trade more). Each instrument has a base price between 20 and 5000 rupees and a
last price that random-walks by up to 3 ticks of 0.05 per fill. Quantities are uniform 1-100.
Sides follow a per-instrument regime: the probability of a BUY is 0.25, 0.5 or 0.75 and the
regime changes with probability 1/300 per fill of that instrument, so positions grow for a
while, shrink, and flip through zero. Prices are distinct ``Decimal`` objects with 2 places
(as a broker's trade payload would give them).

Timing: one ``time.perf_counter`` interval around ``fifo_match_by_key(fills)``, which, in one
pass over the fills in arrival order, validates each fill, converts its Decimal price to integer
units and FIFO-matches it against its instrument's position (then commits the 100 positions).
Generating the fills is excluded. The garbage collector stays on, but ``gc.collect()`` runs just
before the timed call so that the collection owed for the million freshly generated fills is
not billed to the matcher.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portfolio.fifo import fifo_match_by_key  # noqa: E402

TICK_PAISE = 5
STEP_TICKS = 3
QUANTITY_RANGE = (1, 100)
BUY_BIASES = (0.25, 0.5, 0.75)
REGIME_CHANGE = 1 / 300


def generate(n_fills: int, n_instruments: int, seed: int) -> list[tuple[str, str, int, Decimal]]:
    rnd = random.Random(seed)
    symbols = [f"SYM{i:03d}" for i in range(n_instruments)]
    last = [rnd.randrange(2000, 500000, TICK_PAISE) for _ in range(n_instruments)]
    bias = [rnd.choice(BUY_BIASES) for _ in range(n_instruments)]
    weights = [1 / (i + 1) ** 0.8 for i in range(n_instruments)]
    picks = rnd.choices(range(n_instruments), weights=weights, k=n_fills)
    randint = rnd.randint
    rand = rnd.random
    lo, hi = QUANTITY_RANGE
    fills = []
    append = fills.append
    for i in picks:
        if rand() < REGIME_CHANGE:
            bias[i] = rnd.choice(BUY_BIASES)
        price = max(TICK_PAISE, last[i] + randint(-STEP_TICKS, STEP_TICKS) * TICK_PAISE)
        last[i] = price
        side = "BUY" if rand() < bias[i] else "SELL"
        append((symbols[i], side, randint(lo, hi), Decimal(f"{price // 100}.{price % 100:02d}")))
    return fills


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--instruments", type=int, default=100)
    args = parser.parse_args(argv)

    fills = generate(args.fills, args.instruments, args.seed)

    gc.collect()
    start = time.perf_counter()
    states = fifo_match_by_key(fills)
    elapsed = time.perf_counter() - start

    open_lots = sum(len(s.lots) for s in states.values())
    flat = sum(1 for s in states.values() if s.is_flat)
    print(f"# fills: {len(fills)}")
    print(f"# instruments: {len(states)}, flat at end: {flat}, open lots at end: {open_lots}, seed: {args.seed}")
    print(f"fifo_1m_fills_s: {elapsed:.3f} s")
    return {"fifo_1m_fills_s": elapsed}


if __name__ == "__main__":
    main()
