"""Portfolio pages: the dashboard (and its resync fragments), portfolio, trades (with CSV), monitoring.

Thin: selectors read, templates render. Every page shows only the signed-in trader's rows.
"""

import csv

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import selectors
from .forms import TradeFilterForm

TRADES_PER_PAGE = 50
RUNS_PER_PAGE = 50
CSV_HEADER = [
    "filled_at",
    "account",
    "exchange",
    "symbol",
    "product",
    "side",
    "quantity",
    "price",
    "value",
    "order",
    "broker_trade_id",
    "broker_order_id",
]


@login_required
@require_GET
def dashboard(request):
    return render(request, "portfolio/dashboard.html", _dashboard_context(request.user))


@login_required
@never_cache
@require_GET
def dashboard_fragments(request):
    """Every live part of the dashboard, out of band: fetched when the websocket (re)connects."""
    context = {**_dashboard_context(request.user), "with_series": True}
    return render(request, "portfolio/partials/dashboard_push.html", context)


def _dashboard_context(user) -> dict:
    dashboard = selectors.dashboard_of(user)
    # The chart's points as [unix seconds, "total"]: the total stays an exact string until the browser.
    series = [
        [int(point.taken_at.timestamp()), str(point.total)]
        for point in selectors.pnl_series(user, dashboard.chart_since)
    ]
    return {"dashboard": dashboard, "series": series}


@login_required
@require_GET
def portfolio(request):
    context = {
        "summary": selectors.pnl_summary(request.user),
        "breakdown": selectors.pnl_by_symbol_and_day(request.user),
        "positions": selectors.positions_of(request.user),
    }
    return render(request, "portfolio/portfolio.html", context)


@login_required
@require_GET
def trades(request):
    filters = TradeFilterForm(request.user, request.GET)
    rows = selectors.trades_of(request.user, **filters.selector_kwargs())
    if request.GET.get("format") == "csv":
        if filters.errors:
            return _csv_refused(filters)
        return _trades_csv(rows)
    page = Paginator(rows, TRADES_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "portfolio/trades.html", {"filters": filters, "page": page})


def _csv_refused(filters: TradeFilterForm) -> HttpResponse:
    """A download asked with a bad filter: refused, naming it. The page shows it beside its field and
    lists unfiltered; a file has nowhere to show it, and would hold every trade as the filtered ones.
    An account not the trader's (or none) is not found, as any other trader's object is."""
    if "account" in filters.errors:
        raise Http404("No such broker account.")
    text = "".join(f"{name}: {' '.join(errors)}\n" for name, errors in filters.errors.items())
    return HttpResponseBadRequest(text, content_type="text/plain; charset=utf-8")


def _text(value) -> str:
    """A text cell that a spreadsheet will not run as a formula."""
    value = str(value or "")
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _trades_csv(rows) -> HttpResponse:
    """The filtered fills as CSV: Decimals exactly as stored, times in the viewer's timezone (ISO 8601).

    Not streamed: under ASGI a synchronous stream is collected in memory anyway.
    """
    zone = timezone.get_current_timezone()
    stamp = timezone.localtime(timezone=zone).strftime("%Y%m%d-%H%M%S")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="trades-{stamp}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for trade in rows.iterator(chunk_size=2000):
        writer.writerow(
            [
                trade.filled_at.astimezone(zone).isoformat(),
                _text(trade.account.label),
                _text(trade.instrument.exchange),
                _text(trade.instrument.tradingsymbol),
                _text(trade.product),
                trade.side,
                trade.quantity,
                trade.price,
                trade.price * trade.quantity,
                _text(trade.order.reference if trade.order else ""),
                _text(trade.broker_trade_id),
                _text(trade.broker_order_id),
            ]
        )
    return response


@login_required
@require_GET
def monitoring(request):
    errors_only = request.GET.get("status") == "errors"
    runs = selectors.account_runs_of(request.user, errors_only=errors_only)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "portfolio/monitoring.html", {"page": page, "errors_only": errors_only})
