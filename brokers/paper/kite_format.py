"""The paper exchange's state in Kite Connect v3's wire format, field for field.

Each function returns what Kite returns in ``data`` for that call (see
``brokers/kite/samples/``). Numbers are JSON numbers, times are ``YYYY-MM-DD HH:MM:SS``
in IST, like Kite.
"""

import csv
import hashlib
import io
from decimal import Decimal

from .engine import IST, PositionRow, Status, price_band
from .models import PaperClient, PaperInstrument, PaperOrder, PaperTrade

EXCHANGES = ["NSE", "NFO", "BFO", "CDS", "BSE", "MCX", "BCD", "MF"]
PRODUCTS = ["CNC", "NRML", "MIS", "BO", "CO"]
ORDER_TYPES = ["MARKET", "LIMIT", "SL", "SL-M"]


def number(value) -> float | int:
    """Kite sends plain JSON numbers: whole values as ints, the rest as floats."""
    value = Decimal(value)
    return int(value) if value == value.to_integral_value() else float(value)


def kite_time(value) -> str | None:
    return value.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S") if value else None


def profile(client: PaperClient) -> dict:
    return {
        "user_id": client.user_id,
        "user_type": "individual",
        "email": f"{client.user_id.lower()}@paper.exchange",
        "user_name": client.name or client.user_id,
        "user_shortname": (client.name or client.user_id).split(" ")[0],
        "broker": "PAPER",
        "exchanges": EXCHANGES,
        "products": PRODUCTS,
        "order_types": ORDER_TYPES,
        "avatar_url": None,
        "meta": {"demat_consent": "physical"},
    }


def session(client: PaperClient, access_token: str, login_time) -> dict:
    return {
        "user_type": "individual",
        "email": f"{client.user_id.lower()}@paper.exchange",
        "user_name": client.name or client.user_id,
        "user_shortname": (client.name or client.user_id).split(" ")[0],
        "broker": "PAPER",
        "exchanges": EXCHANGES,
        "products": PRODUCTS,
        "order_types": ORDER_TYPES,
        "avatar_url": None,
        "user_id": client.user_id,
        "api_key": client.api_key,
        "access_token": access_token,
        "public_token": hashlib.sha256(f"public:{access_token}".encode()).hexdigest()[:32],
        "enctoken": "",
        "refresh_token": "",
        "silo": "",
        "login_time": kite_time(login_time),
        "meta": {"demat_consent": "physical"},
    }


def order(order: PaperOrder) -> dict:
    instrument = order.instrument
    # The paper exchange refuses in its RMS, before the exchange: Kite's REJECTED order has no
    # exchange order id and no exchange timestamps.
    at_exchange = order.status != Status.REJECTED
    return {
        "placed_by": order.client.user_id,
        "order_id": order.order_id,
        "exchange_order_id": (order.exchange_order_id or None) if at_exchange else None,
        "parent_order_id": None,
        "status": order.status,
        "status_message": order.status_message or None,
        "status_message_raw": order.status_message or None,
        "order_timestamp": kite_time(order.placed_at),
        "exchange_update_timestamp": kite_time(order.updated_at) if at_exchange else None,
        "exchange_timestamp": kite_time(order.placed_at) if at_exchange else None,
        "variety": order.variety,
        "modified": order.modifications > 0,
        "exchange": instrument.exchange,
        "tradingsymbol": instrument.tradingsymbol,
        "instrument_token": instrument.instrument_token,
        "order_type": order.order_type,
        "transaction_type": order.transaction_type,
        "validity": order.validity,
        "product": order.product,
        "quantity": order.quantity,
        "disclosed_quantity": 0,
        "price": number(order.price),
        "trigger_price": number(order.trigger_price),
        # The fills' average as the exchange keeps it (to 4 places, as the in-process adapter tells
        # it); Kite's is not rounded to the paisa either (88.08333 for fills at 88.05, 88.10, 88.10).
        "average_price": number(round(order.average_price, 4)),
        "filled_quantity": order.filled_quantity,
        "pending_quantity": order.pending_quantity,
        "cancelled_quantity": order.cancelled_quantity,
        "market_protection": 0,
        "meta": {},
        "tag": order.tag or None,
        "guid": f"paper-{order.order_id}",
    }


def postback(order_row: PaperOrder) -> dict:
    """Kite's postback body: the order plus user_id, app_id, unfilled_quantity and checksum."""
    client = order_row.client
    body = order(order_row)
    body.pop("modified")  # Kite's postback has every order field but this one
    if body["status"] == Status.OPEN and order_row.filled_quantity:
        body["status"] = "UPDATE"  # what Kite posts back for a partial fill of an open order
    checksum = hashlib.sha256(f"{order_row.order_id}{body['order_timestamp']}{client.api_secret}".encode()).hexdigest()
    return {
        "user_id": client.user_id,
        "unfilled_quantity": order_row.quantity - order_row.filled_quantity - order_row.cancelled_quantity,
        "app_id": client.pk,
        "checksum": checksum,
        **body,
    }


def trade(trade: PaperTrade) -> dict:
    return {
        "trade_id": trade.trade_id,
        "order_id": trade.order.order_id,
        "exchange": trade.instrument.exchange,
        "tradingsymbol": trade.instrument.tradingsymbol,
        "instrument_token": trade.instrument.instrument_token,
        "product": trade.product,
        "average_price": number(trade.price),
        "quantity": trade.quantity,
        "exchange_order_id": trade.order.exchange_order_id,
        "transaction_type": trade.transaction_type,
        "fill_timestamp": kite_time(trade.filled_at),
        "order_timestamp": trade.order.placed_at.astimezone(IST).strftime("%H:%M:%S"),
        "exchange_timestamp": kite_time(trade.filled_at),
    }


def position(row: PositionRow) -> dict:
    instrument = row.instrument
    last = instrument.last_price
    return {
        "tradingsymbol": instrument.tradingsymbol,
        "exchange": instrument.exchange,
        "instrument_token": instrument.instrument_token,
        "product": row.product,
        "quantity": row.quantity,
        "overnight_quantity": row.overnight_quantity,
        "multiplier": 1,
        "average_price": number(round(row.average_price, 4)),
        "close_price": number(instrument.previous_close),
        "last_price": number(last),
        "value": number(row.sell_value - row.buy_value),
        "pnl": number(round(row.pnl, 4)),
        "m2m": number(round(row.pnl, 4)),
        "unrealised": number(round(row.unrealised, 4)),
        "realised": number(round(row.realised, 4)),
        "buy_quantity": row.buy_quantity,
        "buy_price": number(round(row.buy_price, 4)),
        "buy_value": number(row.buy_value),
        "buy_m2m": number(row.buy_value),
        "sell_quantity": row.sell_quantity,
        "sell_price": number(round(row.sell_price, 4)),
        "sell_value": number(row.sell_value),
        "sell_m2m": number(row.sell_value),
        "day_buy_quantity": row.day_buy_quantity,
        "day_buy_price": number(round(row.day_buy_value / row.day_buy_quantity, 4)) if row.day_buy_quantity else 0,
        "day_buy_value": number(row.day_buy_value),
        "day_sell_quantity": row.day_sell_quantity,
        "day_sell_price": number(round(row.day_sell_value / row.day_sell_quantity, 4)) if row.day_sell_quantity else 0,
        "day_sell_value": number(row.day_sell_value),
    }


def holding(instrument: PaperInstrument, quantity: int, average_price: Decimal) -> dict:
    change = instrument.last_price - instrument.previous_close
    return {
        "tradingsymbol": instrument.tradingsymbol,
        "exchange": instrument.exchange,
        "instrument_token": instrument.instrument_token,
        "isin": f"INE{instrument.instrument_token % 10**6:06d}PAPER"[:12],
        "product": "CNC",
        "price": 0,
        "quantity": quantity,
        "used_quantity": 0,
        "t1_quantity": 0,
        "realised_quantity": quantity,
        "authorised_quantity": 0,
        "authorised_date": None,
        "authorisation": {},
        "opening_quantity": quantity,
        "short_quantity": 0,
        "collateral_quantity": 0,
        "collateral_type": "",
        "discrepancy": False,
        "average_price": number(round(average_price, 4)),
        "last_price": number(instrument.last_price),
        "close_price": number(instrument.previous_close),
        "pnl": number(round((instrument.last_price - average_price) * quantity, 4)),
        "day_change": number(change),
        "day_change_percentage": float(change * 100 / instrument.previous_close) if instrument.previous_close else 0,
        "mtf": {"quantity": 0, "used_quantity": 0, "average_price": 0, "value": 0, "initial_margin": 0},
    }


def _segment(enabled: bool, *, cash=0, opening=0, blocked=0, realised=0) -> dict:
    live = Decimal(cash) - Decimal(blocked)
    return {
        "enabled": enabled,
        "net": number(live),
        "available": {
            "adhoc_margin": 0,
            "cash": number(cash),
            "opening_balance": number(opening),
            "live_balance": number(live),
            "collateral": 0,
            "intraday_payin": 0,
        },
        "utilised": {
            "debits": number(blocked),
            "exposure": 0,
            "m2m_realised": number(realised),
            "m2m_unrealised": 0,
            "option_premium": 0,
            "payout": 0,
            "span": 0,
            "holding_sales": 0,
            "turnover": 0,
            "liquid_collateral": 0,
            "stock_collateral": 0,
            "delivery": 0,
        },
    }


def margins(funds: dict) -> dict:
    return {"equity": _segment(True, **funds), "commodity": _segment(True)}


def quote(instrument: PaperInstrument, *, kind: str = "full") -> dict:
    key_fields = {"instrument_token": instrument.instrument_token, "last_price": number(instrument.last_price)}
    ohlc = {
        "open": number(instrument.open),
        "high": number(instrument.high),
        "low": number(instrument.low),
        "close": number(instrument.previous_close),
    }
    if kind == "ltp":
        return key_fields
    if kind == "ohlc":
        return {**key_fields, "ohlc": ohlc}
    empty = [{"price": 0, "quantity": 0, "orders": 0} for _ in range(4)]
    size = instrument.tick_volume or instrument.lot_size
    lower_circuit, upper_circuit = price_band(instrument)  # the prices the exchange accepts, on its tick
    return {
        "instrument_token": instrument.instrument_token,
        "timestamp": kite_time(instrument.updated_at),
        "last_trade_time": kite_time(instrument.updated_at),
        "last_price": number(instrument.last_price),
        "last_quantity": instrument.lot_size,
        "buy_quantity": size,
        "sell_quantity": size,
        "volume": instrument.volume,
        "average_price": number(instrument.last_price),
        "oi": 0,
        "oi_day_high": 0,
        "oi_day_low": 0,
        "net_change": number(instrument.last_price - instrument.previous_close),
        "lower_circuit_limit": number(lower_circuit),
        "upper_circuit_limit": number(upper_circuit),
        "ohlc": ohlc,
        "depth": {
            "buy": [{"price": number(instrument.bid), "quantity": size, "orders": 1}, *empty],
            "sell": [{"price": number(instrument.ask), "quantity": size, "orders": 1}, *empty],
        },
    }


INSTRUMENT_COLUMNS = [
    "instrument_token",
    "exchange_token",
    "tradingsymbol",
    "name",
    "last_price",
    "expiry",
    "strike",
    "tick_size",
    "lot_size",
    "instrument_type",
    "segment",
    "exchange",
]


def instruments_csv(instruments) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(INSTRUMENT_COLUMNS)
    for i in instruments:
        writer.writerow(
            [
                i.instrument_token,
                i.exchange_token,
                i.tradingsymbol,
                i.name,
                i.last_price,
                i.expiry.isoformat() if i.expiry else "",
                i.strike,
                i.tick_size.normalize(),
                i.lot_size,
                i.instrument_type,
                i.segment,
                i.exchange,
            ]
        )
    return out.getvalue()
