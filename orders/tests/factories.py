from brokers.models import Instrument
from orders import services


def instrument(symbol="INFY", exchange="NSE") -> Instrument:
    return Instrument.objects.get(exchange=exchange, tradingsymbol=symbol)


def place(actor, account, *, symbol="INFY", side="BUY", quantity=1, order_type="MARKET", product="MIS", **kwargs):
    kwargs.setdefault("source", "manual")
    kwargs.setdefault("cause", "test")
    return services.order_place(
        actor=actor,
        account=account,
        instrument=instrument(symbol, kwargs.pop("exchange", "NSE")),
        side=side,
        quantity=quantity,
        order_type=order_type,
        product=product,
        **kwargs,
    )
