from django.db.models import Q

from .models import Instrument


def instruments_search(query: str, *, limit: int = 100) -> tuple[list[Instrument], bool]:
    """Instruments whose symbol starts with, or whose name contains, the query. (rows, truncated)"""
    rows = Instrument.objects.all()
    query = (query or "").strip()[:64]
    if query:
        rows = rows.filter(Q(tradingsymbol__istartswith=query) | Q(name__icontains=query))
    found = list(rows.order_by("exchange", "tradingsymbol")[: limit + 1])
    return found[:limit], len(found) > limit
