"""The paper exchange's ticker: its prices, handed to the platform like a broker's tick feed."""

from brokers import services

from .adapter import to_quote
from .models import PaperInstrument


def publish_ticks() -> int:
    return services.ticks_apply(to_quote(instrument) for instrument in PaperInstrument.objects.all())
