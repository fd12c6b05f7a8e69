"""FIFO lot matching and PnL for one instrument + product, as plain Python (no Django).

Semantics (an Indian equity/F&O trader's FIFO):

* A fill is ``(side, quantity, price)``: side ``"BUY"`` or ``"SELL"``, quantity a positive ``int``,
  price a non-negative ``Decimal``, ``str`` or ``int`` (whole rupees). Floats are refused.
* A fill against an opposite open position closes the earliest open lots first (partially if
  needed). Closing a long lot realizes ``(sell price - lot price) * qty``, closing a short lot
  ``(lot price - buy price) * qty``. A fill larger than the opposite open quantity closes all of
  it and opens a lot in its own direction with the remainder ("flip through zero"). Same-direction
  fills append lots.
* Multiplier-free: PnL is in price units x quantity. For F&O pass the quantity in units
  (lots x lot size); a contract multiplier, if any, is the caller's.

Representation (what a caller must know):

* Prices are held as ``int`` in units of ``1 / SCALE`` rupee (``SCALE = 10_000``, i.e. 4 decimal
  places, the ``decimal_places=4`` of the project's price columns). That is exact for the 0.05 and
  0.01 equity/F&O ticks and for the 0.0025 currency-derivative tick. A price with a non-zero
  digit beyond the 4th decimal place is refused with ``ValueError`` (never rounded).
* All matching is integer arithmetic; ``Decimal`` appears only at the API boundary. Every
  ``Decimal`` this module returns is exact and carries exactly 4 decimal places (exponent -4),
  e.g. ``Decimal("150.0000")``; quantize for display if you like.
* The one rounded figure is ``average_price``: open cost / open quantity is generally not a
  finite decimal, so it is rounded to 4 decimal places with ROUND_HALF_EVEN (what Django's
  ``DecimalField(decimal_places=4)`` would store). ``open_cost`` is the exact numerator.
* Realized PnL is not accumulated lot by lot: it is always ``cash_flow + signed open cost``
  (``+cost`` when long, ``-cost`` when short), which is an exact identity of FIFO matching. So a
  full close or a flip is O(1) however many lots are open, and only partial closes walk lots.

Batch calls (``apply_many``, ``fifo_match``, ``fifo_match_by_key``) are all or nothing: on a bad
fill they leave every position as it was and raise ``ValueError`` naming the first bad fill's
index and its problem. Their fills are tuples (any sequences); items after the price
(e.g. a trade id or timestamp) are ignored.

State is resumable: ``to_dict()`` gives a JSON-able dict (numbers as strings) that
``PositionState.from_dict()`` turns back into an equal state, so a monitoring cycle can keep the
position in a JSON column and apply only new trades. A ``PositionState`` is not thread-safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext

__all__ = [
    "BUY",
    "SELL",
    "SCALE",
    "PRICE_PLACES",
    "PositionState",
    "fifo_match",
    "fifo_match_by_key",
    "to_units",
    "from_units",
]

BUY = "BUY"
SELL = "SELL"
PRICE_PLACES = 4
SCALE = 10**PRICE_PLACES  # internal price unit: 1/10000 rupee
STATE_VERSION = 1

_D_SCALE = Decimal(SCALE)


class _BadFill(Exception):
    """Raised by the hot loop; the caller restores the state and finds the message."""


# Arithmetic at the boundary must never round: unlimited precision and exponent range.
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_HALF_EVEN)


# --------------------------------------------------------------------------------------------
# Boundary conversions
# --------------------------------------------------------------------------------------------


def _price_units(price: object, what: str = "price", negative_ok: bool = False) -> int:
    """``price`` (Decimal, str or int rupees) as an int of 1/SCALE rupee; ValueError if invalid.

    Must be called with ``_EXACT`` as the current decimal context (``to_units`` does that).
    """
    if isinstance(price, bool):
        raise ValueError(f"{what} must be a Decimal, str or int, not bool ({price!r})")
    if isinstance(price, int):
        if price < 0 and not negative_ok:
            raise ValueError(f"{what} must not be negative, got {price!r}")
        return int(price) * SCALE
    if isinstance(price, str):
        try:
            value = Decimal(price)
        except InvalidOperation:
            raise ValueError(f"{what} is not a decimal number: {price!r}")
    elif isinstance(price, Decimal):
        value = price
    else:
        raise ValueError(f"{what} must be a Decimal, str or int, not {type(price).__name__} ({price!r})")
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, got {price!r}")
    if value < 0 and not negative_ok:
        raise ValueError(f"{what} must not be negative, got {price!r}")
    scaled = value * _D_SCALE
    units = int(scaled)
    if units != scaled:
        raise ValueError(f"{what} has more than {PRICE_PLACES} decimal places: {price!r}")
    return units


def to_units(price: Decimal | str | int) -> int:
    """A non-negative price (Decimal, str, or int rupees) as an ``int`` of ``1/SCALE`` rupee.

    Raises ValueError for floats, bools, negative, non-finite or malformed prices, and for prices
    not exact at ``PRICE_PLACES`` decimal places.
    """
    with localcontext(_EXACT):
        return _price_units(price)


def from_units(units: int) -> Decimal:
    """``units`` of ``1/SCALE`` (money or price) as an exact Decimal with ``PRICE_PLACES`` places."""
    return Decimal(units).scaleb(-PRICE_PLACES, _EXACT)


def _check_quantity(quantity: object) -> None:
    if quantity.__class__ is not int:
        raise ValueError(f"quantity must be a positive int, got {quantity!r} ({type(quantity).__name__})")
    if quantity <= 0:  # type: ignore[operator]
        raise ValueError(f"quantity must be a positive int, got {quantity!r}")


def _signed_quantity(side: object, quantity: object) -> int:
    """+quantity for a BUY, -quantity for a SELL; ValueError naming the problem otherwise."""
    _check_quantity(quantity)
    if side == BUY:
        return quantity  # type: ignore[return-value]
    if side == SELL:
        return -quantity  # type: ignore[operator]
    raise ValueError(f"side must be 'BUY' or 'SELL', got {side!r}")


def _fill_problem(fill: object, keyed: bool) -> str | None:
    """What is wrong with one fill (``(side, quantity, price)``, with a leading key if ``keyed``), or None."""
    shape = "(key, side, quantity, price)" if keyed else "(side, quantity, price)"
    try:
        items = tuple(fill)  # type: ignore[arg-type]
    except TypeError:
        items = ()
    offset = 1 if keyed else 0
    if len(items) < offset + 3:
        return f"expected {shape}, got {fill!r}"
    if keyed:
        try:
            hash(items[0])
        except TypeError:
            return f"key must be hashable, got {items[0]!r}"
    side, quantity, price = items[offset : offset + 3]
    try:
        _signed_quantity(side, quantity)
        to_units(price)
    except ValueError as exc:
        return str(exc)
    return None


def _first_problem(fills: Iterable[object], keyed: bool) -> str | None:
    """``"fill <index>: <problem>"`` for the first invalid fill, or None. The slow path of errors."""
    for index, fill in enumerate(fills):
        problem = _fill_problem(fill, keyed)
        if problem is not None:
            return f"fill {index}: {problem}"
    return None


# --------------------------------------------------------------------------------------------
# Position state
# --------------------------------------------------------------------------------------------


class PositionState:
    """FIFO position of one instrument + product, updated fill by fill.

    Internals (ints, prices in 1/SCALE rupee): ``_lots`` a deque of ``(qty, price)`` tuples, all
    on the side of ``_net``, earliest first, ``qty > 0``; ``_net`` net quantity (+long/-short);
    ``_cash`` sum of sell qty x price - buy qty x price; ``_cost`` sum of qty x price over
    the open lots (>= 0). Realized PnL = ``_cash + (+_cost if long else -_cost)``.
    """

    __slots__ = ("_lots", "_net", "_cash", "_cost")

    def __init__(self) -> None:
        self._lots: deque[tuple[int, int]] = deque()
        self._net = 0
        self._cash = 0
        self._cost = 0

    # ---- updates ------------------------------------------------------------------------

    def apply(self, side: str, quantity: int, price: Decimal | str | int) -> Decimal:
        """Apply one fill; return the PnL it realized (0 if it only opened or added to the position).

        Raises ValueError (bad side, quantity not a positive int, bad price) without changing the state.
        """
        _signed_quantity(side, quantity)
        to_units(price)
        before = self._realized_units()
        self._run(((side, quantity, price),))
        return from_units(self._realized_units() - before)

    def apply_many(self, fills: Iterable[tuple[str, int, Decimal | str | int]]) -> Decimal:
        """Apply ``(side, quantity, price)`` fills in order; return the PnL they realized together.

        All or nothing: on a bad fill, the state is restored and ValueError names the first bad
        fill's index and its problem.
        """
        if not isinstance(fills, list | tuple):
            fills = list(fills)
        before = self._realized_units()
        snapshot = self._snapshot()
        try:
            self._run(fills)
        except Exception:
            self._restore(snapshot)
            problem = _first_problem(fills, keyed=False)
            if problem is None:
                raise
            raise ValueError(problem) from None
        return from_units(self._realized_units() - before)

    def _snapshot(self) -> tuple:
        return (self._lots.copy(), self._net, self._cash, self._cost)

    def _restore(self, snapshot: tuple) -> None:
        self._lots, self._net, self._cash, self._cost = snapshot

    def _run(self, fills: Iterable[Sequence], offset: int = 0) -> None:
        """The hot loop: check, convert and FIFO-match fills, in ints.

        Each fill's side, quantity and price are its items ``offset``, ``offset + 1`` and
        ``offset + 2`` (indexing, not unpacking, so that ``fifo_match_by_key`` can pass its
        ``(key, side, quantity, price)`` tuples without copying; later items are ignored).
        Raises on the first bad fill (any exception type, no message worth showing) leaving a
        half-updated state: callers snapshot and restore, then describe the problem with
        ``_first_problem``. A Decimal price is converted inline; others go through ``_price_units``.
        """
        lots = self._lots
        append = lots.append
        popleft = lots.popleft
        clear = lots.clear
        net = self._net
        cash = self._cash
        cost = self._cost
        d_scale = _D_SCALE
        decimal_cls = Decimal
        price_units = _price_units
        buy = BUY
        sell = SELL
        i_side = offset
        i_qty = offset + 1
        i_price = offset + 2
        try:
            with localcontext(_EXACT):
                for fill in fills:
                    side = fill[i_side]
                    qty = fill[i_qty]
                    price = fill[i_price]
                    if qty.__class__ is not int or qty <= 0:
                        raise _BadFill
                    if price.__class__ is decimal_cls:
                        scaled = price * d_scale  # exact: the context has unlimited precision
                        p = int(scaled)  # ValueError/OverflowError for NaN/Infinity
                        if p < 0 or p != scaled:
                            raise _BadFill
                    else:
                        p = price_units(price)
                    if side == buy:
                        v = qty * p
                        cash -= v
                        if net >= 0:  # open or add long
                            append((qty, p))
                            net += qty
                            cost += v
                        elif qty < -net:  # partial cover, stays short: walk the lots FIFO
                            net += qty
                            while True:
                                lq, lp = lots[0]
                                if lq > qty:
                                    lots[0] = (lq - qty, lp)
                                    cost -= qty * lp
                                    break
                                popleft()
                                cost -= lq * lp
                                qty -= lq
                                if not qty:
                                    break
                        else:  # covers the whole short (realized = cash - cost), maybe flips long
                            clear()
                            net += qty
                            if net:
                                append((net, p))
                                cost = net * p
                            else:
                                cost = 0
                    elif side == sell:
                        v = qty * p
                        cash += v
                        if net <= 0:  # open or add short
                            append((qty, p))
                            net -= qty
                            cost += v
                        elif qty < net:  # partial close, stays long: walk the lots FIFO
                            net -= qty
                            while True:
                                lq, lp = lots[0]
                                if lq > qty:
                                    lots[0] = (lq - qty, lp)
                                    cost -= qty * lp
                                    break
                                popleft()
                                cost -= lq * lp
                                qty -= lq
                                if not qty:
                                    break
                        else:  # closes the whole long (realized = cash + cost), maybe flips short
                            clear()
                            net -= qty
                            if net:
                                append((-net, p))
                                cost = -net * p
                            else:
                                cost = 0
                    else:
                        raise _BadFill
        finally:
            self._net = net
            self._cash = cash
            self._cost = cost

    # ---- read-outs -----------------------------------------------------------------------

    def _realized_units(self) -> int:
        net = self._net
        if net > 0:
            return self._cash + self._cost
        if net < 0:
            return self._cash - self._cost
        return self._cash

    @property
    def net_quantity(self) -> int:
        """Net open quantity: positive long, negative short, 0 flat."""
        return self._net

    @property
    def is_flat(self) -> bool:
        return self._net == 0

    @property
    def lots(self) -> list[tuple[int, Decimal]]:
        """Open lots, earliest first, as ``(quantity > 0, price)``; their side is that of net_quantity."""
        return [(q, from_units(p)) for q, p in self._lots]

    @property
    def realized_pnl(self) -> Decimal:
        """Cumulative realized PnL (exact)."""
        return from_units(self._realized_units())

    @property
    def cash_flow(self) -> Decimal:
        """Sum of sell qty x price minus buy qty x price (exact)."""
        return from_units(self._cash)

    @property
    def open_cost(self) -> Decimal:
        """Sum of qty x price over the open lots, >= 0 (exact); 0 when flat."""
        return from_units(self._cost)

    @property
    def average_price(self) -> Decimal:
        """Quantity-weighted average price of the open lots, ROUND_HALF_EVEN to 4 places; 0 when flat."""
        qty = abs(self._net)
        if not qty:
            return from_units(0)
        quotient, remainder = divmod(self._cost, qty)
        twice = 2 * remainder
        if twice > qty or (twice == qty and quotient & 1):
            quotient += 1
        return from_units(quotient)

    def unrealized_pnl(self, last_price: Decimal | str | int) -> Decimal:
        """PnL of the open lots marked at ``last_price`` (exact); 0 when flat."""
        last = to_units(last_price)
        net = self._net
        if net > 0:
            return from_units(net * last - self._cost)
        if net < 0:
            return from_units(self._cost + net * last)
        return from_units(0)

    def total_pnl(self, last_price: Decimal | str | int) -> Decimal:
        """Realized + unrealized = cash_flow + net_quantity x last_price (exact)."""
        return from_units(self._cash + self._net * to_units(last_price))

    # ---- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-able snapshot: ints as int, money and lots as strings (lots: ``[qty, price]``)."""
        return {
            "version": STATE_VERSION,
            "net_quantity": self._net,
            "lots": [[str(q), str(from_units(p))] for q, p in self._lots],
            "cash_flow": str(from_units(self._cash)),
            "realized_pnl": str(self.realized_pnl),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PositionState:
        """Rebuild a state from ``to_dict()`` output (also after a JSON round trip).

        ``cash_flow`` and ``realized_pnl`` are tied by ``realized = cash_flow +/- open cost``;
        either may be omitted (e.g. to seed an opening position with ``realized_pnl: "0"``) and
        is then derived; if both are given they must agree. ValueError on any inconsistency.
        """
        if not isinstance(data, dict):
            raise ValueError(f"state must be a dict, got {type(data).__name__}")
        version = data.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ValueError(f"unsupported state version {version!r}")
        net = _int_field(data.get("net_quantity", 0), "net_quantity")
        raw_lots = data.get("lots", [])
        if not isinstance(raw_lots, list | tuple):
            raise ValueError("lots must be a list of [quantity, price]")
        lots: deque[tuple[int, int]] = deque()
        cost = 0
        for i, lot in enumerate(raw_lots):
            if not isinstance(lot, list | tuple) or len(lot) != 2:
                raise ValueError(f"lot {i}: expected [quantity, price], got {lot!r}")
            qty = _int_field(lot[0], f"lot {i} quantity")
            if qty <= 0:
                raise ValueError(f"lot {i}: quantity must be positive, got {lot[0]!r}")
            try:
                price = to_units(lot[1])
            except ValueError as exc:
                raise ValueError(f"lot {i}: {exc}") from None
            lots.append((qty, price))
            cost += qty * price
        if sum(q for q, _ in lots) != abs(net):
            raise ValueError(f"lot quantities sum to {sum(q for q, _ in lots)}, but net_quantity is {net}")
        signed_cost = cost if net > 0 else -cost
        cash_raw = data.get("cash_flow")
        realized_raw = data.get("realized_pnl")
        if cash_raw is None and realized_raw is None:
            raise ValueError("state needs cash_flow or realized_pnl")
        cash = None if cash_raw is None else _money_units(cash_raw, "cash_flow")
        realized = None if realized_raw is None else _money_units(realized_raw, "realized_pnl")
        if cash is None:
            cash = realized - signed_cost  # type: ignore[operator]
        elif realized is not None and realized != cash + signed_cost:
            raise ValueError(
                f"realized_pnl {realized_raw!r} does not match cash_flow {cash_raw!r} and the open lots "
                f"(expected {from_units(cash + signed_cost)})"
            )
        state = cls()
        state._lots = lots
        state._net = net
        state._cash = cash
        state._cost = cost
        return state

    # ---- dunders -------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PositionState):
            return NotImplemented
        return self._net == other._net and self._cash == other._cash and self._lots == other._lots

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"PositionState(net_quantity={self._net}, lots={len(self._lots)}, "
            f"average_price={self.average_price}, realized_pnl={self.realized_pnl})"
        )


def _int_field(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be an integer, got {value!r}")


def _money_units(value: object, name: str) -> int:
    """Like to_units but for money, which may be negative."""
    with localcontext(_EXACT):
        return _price_units(value, name, negative_ok=True)


# --------------------------------------------------------------------------------------------
# Whole sequences
# --------------------------------------------------------------------------------------------


def fifo_match(fills: Iterable[tuple[str, int, Decimal | str | int]]) -> PositionState:
    """FIFO-match a whole sequence of ``(side, quantity, price)`` fills from flat."""
    state = PositionState()
    state.apply_many(fills)
    return state


def fifo_match_by_key(
    fills: Iterable[tuple[Hashable, str, int, Decimal | str | int]],
    states: dict[Hashable, PositionState] | None = None,
) -> dict[Hashable, PositionState]:
    """FIFO-match ``(key, side, quantity, price)`` fills, one position per key (e.g. instrument + product).

    Fills are processed in the order given. Updates and returns ``states`` (a new dict if None),
    adding missing positions. All or nothing: on a bad fill no position changes and ValueError
    names the first bad fill's index and its problem.
    """
    if states is None:
        states = {}
    if not isinstance(fills, list | tuple):
        fills = list(fills)
    try:
        work = _run_keyed(fills, states)
    except Exception:
        problem = _first_problem(fills, keyed=True)
        if problem is None:
            raise
        raise ValueError(problem) from None
    for key, (lots, net, cash, cost) in work.items():
        state = states.get(key)
        if state is None:
            state = states[key] = PositionState()
        state._lots = lots
        state._net = net
        state._cash = cash
        state._cost = cost
    return states


def _run_keyed(fills: Iterable[Sequence], states: dict[Hashable, PositionState]) -> dict[Hashable, list]:
    """The hot loop of ``fifo_match_by_key``: ``PositionState._run`` for interleaved keys.

    Works on copies, one ``[lots, net, cash, cost]`` record per key touched, so ``states`` is not
    changed (the caller commits the records). Switching records per fill in arrival order is
    faster than grouping the fills by key first, which scatters the memory reads. The matching
    below must stay identical to ``PositionState._run`` (the tests compare both with a reference).
    """
    records: dict[Hashable, list] = {}
    get = records.get
    d_scale = _D_SCALE
    decimal_cls = Decimal
    price_units = _price_units
    buy = BUY
    sell = SELL
    with localcontext(_EXACT):
        for fill in fills:
            key = fill[0]
            side = fill[1]
            qty = fill[2]
            price = fill[3]
            record = get(key)
            if record is None:
                state = states.get(key)
                if state is None:
                    record = records[key] = [deque(), 0, 0, 0]
                else:
                    record = records[key] = [state._lots.copy(), state._net, state._cash, state._cost]
            lots, net, cash, cost = record
            if qty.__class__ is not int or qty <= 0:
                raise _BadFill
            if price.__class__ is decimal_cls:
                scaled = price * d_scale
                p = int(scaled)
                if p < 0 or p != scaled:
                    raise _BadFill
            else:
                p = price_units(price)
            if side == buy:
                v = qty * p
                cash -= v
                if net >= 0:
                    lots.append((qty, p))
                    net += qty
                    cost += v
                elif qty < -net:
                    net += qty
                    while True:
                        lq, lp = lots[0]
                        if lq > qty:
                            lots[0] = (lq - qty, lp)
                            cost -= qty * lp
                            break
                        lots.popleft()
                        cost -= lq * lp
                        qty -= lq
                        if not qty:
                            break
                else:
                    lots.clear()
                    net += qty
                    if net:
                        lots.append((net, p))
                        cost = net * p
                    else:
                        cost = 0
            elif side == sell:
                v = qty * p
                cash += v
                if net <= 0:
                    lots.append((qty, p))
                    net -= qty
                    cost += v
                elif qty < net:
                    net -= qty
                    while True:
                        lq, lp = lots[0]
                        if lq > qty:
                            lots[0] = (lq - qty, lp)
                            cost -= qty * lp
                            break
                        lots.popleft()
                        cost -= lq * lp
                        qty -= lq
                        if not qty:
                            break
                else:
                    lots.clear()
                    net -= qty
                    if net:
                        lots.append((-net, p))
                        cost = -net * p
                    else:
                        cost = 0
            else:
                raise _BadFill
            record[1] = net
            record[2] = cash
            record[3] = cost
    return records
