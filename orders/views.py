"""Order pages: the ticket, the order book, an order's detail, modify and cancel. Thin: services do the work."""

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.forms import apply_validation_error
from brokers.models import Instrument
from brokers.selectors import instruments_search

from . import selectors, services
from .forms import OrderFilterForm, OrderModifyForm, OrderTicketForm
from .models import Order

ORDERS_PER_PAGE = 50
INSTRUMENT_OPTIONS = 20


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _page_cause(request) -> str:
    return f"{request.user.username} via the order page"


@login_required
@require_GET
def order_book(request):
    filters = OrderFilterForm(request.user, request.GET)
    wanted = filters.selector_kwargs()
    orders = selectors.orders_of(request.user, **wanted)
    page = Paginator(orders, ORDERS_PER_PAGE).get_page(request.GET.get("page"))
    # A new order is today's and tops the first page, unless a filter other than the date leaves it out.
    narrowed = page.number > 1 or any(value for name, value in wanted.items() if name != "day")
    return render(request, "orders/book.html", {"filters": filters, "page": page, "narrowed": narrowed})


@login_required
@never_cache  # Back to the ticket fetches a fresh one-time token rather than reusing the placed one
@require_http_methods(["GET", "POST"])
def ticket(request):
    if request.method == "POST":
        form = OrderTicketForm(request.user, request.POST)
        if form.is_valid():
            key = f"ui:{form.cleaned_data['token']}"
            try:
                order = services.order_place(
                    actor=request.user,
                    **form.spec,
                    source=Order.Source.MANUAL,
                    cause=f"ticket by {request.user.username}",
                    idempotency_key=key,
                )
            except ValidationError as exc:
                if "idempotency_key" in getattr(exc, "error_dict", {}):
                    # This ticket's send went through before (the trader has no "key"): say which order it
                    # placed, or the renewed ticket sent again places a second one unawares.
                    form.add_error(None, _ticket_used(selectors.order_of_key(request.user, key)))
                    form.renew_token()
                else:
                    apply_validation_error(form, exc)
            else:
                _announce_placed(request, order)
                return redirect("orders:detail", pk=order.pk)
        elif "token" in form.errors:
            form.renew_token()
    else:
        form = OrderTicketForm(request.user, initial={"instrument": request.GET.get("instrument")})
    return render(request, "orders/ticket.html", {"form": form, "instrument": form.chosen_instrument})


def _ticket_used(order: Order | None) -> str:
    if order is None:
        return "This ticket was already sent; check the order book, then submit it again to place a new order."
    return (
        f"This ticket already placed {order.reference} ({order.side} {order.quantity} "
        f"{order.instrument.tradingsymbol}, {order.get_status_display().lower()}); it was not placed again "
        "with these changes. Check that order before submitting this ticket again: it would place a new one."
    )


def _announce_placed(request, order: Order) -> None:
    what = f"{order.reference}: {order.side} {order.quantity} {order.instrument.tradingsymbol}"
    if order.status == Order.Status.REJECTED:
        messages.error(request, f"{what} was rejected: {order.reject_reason}")
    elif order.status == Order.Status.FAILED:
        messages.error(request, f"{what} failed: {order.reject_reason}")
    elif order.status == Order.Status.NEW:
        # This ticket's first send (a double click, a second tab) is still on its way: not lost.
        messages.info(request, f"{what} is being sent (this ticket was already sent); its page shows the answer.")
    elif not order.broker_order_id:
        messages.warning(request, f"{what} was sent, but the broker's answer was lost; it is being looked up.")
    else:
        messages.success(request, f"Placed {what} ({order.get_status_display().lower()}).")


@login_required
@require_GET
def instrument_options(request):
    """The instruments matching the ticket's search box, as buttons that choose one."""
    query = request.GET.get("q", "").strip()
    rows, truncated = instruments_search(query, limit=INSTRUMENT_OPTIONS) if query else ([], False)
    return render(
        request,
        "orders/partials/instrument_options.html",
        {"instruments": rows, "truncated": truncated, "query": query},
    )


@login_required
@require_GET
def instrument_pick(request, pk):
    """The chosen instrument for the ticket: its id, live price, lot and tick, and the products (that
    the chosen account allows too) and order types it takes."""
    instrument = get_object_or_404(Instrument, pk=pk)
    form = OrderTicketForm.for_instrument(
        request.user,
        instrument,
        account=request.GET.get("account"),
        product=request.GET.get("product"),
        quantity=request.GET.get("quantity"),
        order_type=request.GET.get("order_type"),
    )
    context = {"instrument": instrument, "form": form, "picked": True}
    return render(request, "orders/partials/instrument_chosen.html", context)


@login_required
@require_GET
def account_pick(request):
    """The ticket's product field for a newly chosen account: the products the account allows that
    the chosen instrument takes."""
    form = OrderTicketForm.for_account(
        request.user,
        request.GET.get("account"),
        instrument=request.GET.get("instrument"),
        product=request.GET.get("product"),
    )
    return render(request, "orders/partials/field.html", {"field": form["product"], "oob": True})


@login_required
@require_GET
def detail(request, pk):
    order = selectors.order_of(request.user, pk)
    return _render_detail(request, order, modify_form=OrderModifyForm(order=order))


def _render_detail(request, order: Order, *, modify_form: OrderModifyForm, status: int = 200):
    mine = selectors.orders_of(request.user)
    context = {
        "order": order,
        "events": order.events.all(),
        "parent": mine.filter(pk=order.parent_id).first() if order.parent_id else None,
        "children": mine.filter(parent=order),
        "can_change": order.status in Order.AT_BROKER and bool(order.broker_order_id),
        "modify_form": modify_form,
    }
    return render(request, "orders/detail.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def modify(request, pk):
    """The detail page's modify form posts here; so does the book's inline one (htmx), which GET
    opens in the order's row and answers with the row as it now is, or the form with its errors."""
    order = selectors.order_of(request.user, pk)
    inline = _is_htmx(request)
    # The book shows several rows' forms at once: each its own ids.
    options = {"order": order, "auto_id": f"modify_{order.pk}_%s"} if inline else {"order": order}
    if request.method == "GET":
        if not inline:  # the row's Modify link without htmx: the order's page, with its form
            return _render_detail(request, order, modify_form=OrderModifyForm(order=order))
        closed = services.modify_refusal(order)
        if closed is not None:  # a row shown before the order closed (a push missed): no form for it
            return render(request, "orders/partials/modify_result.html", {"order": order, "refusal": closed.message})
        form = OrderModifyForm(**options)
        return render(request, "orders/partials/order_row_edit.html", {"order": order, "form": form})
    form = OrderModifyForm(request.POST, **options)
    done = modified = False
    lost = None
    if form.is_valid():
        terms = lambda o: (o.quantity, o.order_type, o.price, o.trigger_price)  # noqa: E731
        before = terms(order)
        try:
            services.order_modify(order=order, actor=request.user, cause=_page_cause(request), **form.changes())
            done = True
        except ValidationError as exc:
            apply_validation_error(form, exc)
        except services.OrderActionRefused as exc:
            if exc.outcome_unknown:  # sent, and it may have been done: not an error to send again
                lost = f"Change of {order.reference} sent, but {exc.message[:1].lower()}{exc.message[1:]}"
            else:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        order.refresh_from_db()
        modified = done and terms(order) != before  # what the broker took, not what was typed
    else:
        order.refresh_from_db()
    if inline:
        if done or lost:
            context = {"order": order, "changed": modified, "lost": lost}
            return render(request, "orders/partials/modify_result.html", context)
        closed = services.modify_refusal(order)
        if closed is not None:  # it closed while the form was open: its row as it is now, and why
            return render(request, "orders/partials/modify_result.html", {"order": order, "refusal": closed.message})
        return render(request, "orders/partials/order_row_edit.html", {"order": order, "form": form})
    if lost:
        messages.warning(request, lost)
        return redirect("orders:detail", pk=order.pk)
    if done:
        if modified:
            messages.success(request, f"Modified {order.reference}.")
        else:
            messages.info(request, f"Nothing to change on {order.reference}.")
        return redirect("orders:detail", pk=order.pk)
    return _render_detail(request, order, modify_form=form)


@login_required
@require_GET
def row(request, pk):
    """An order's row in the book (closing its inline modify form)."""
    return render(request, "orders/partials/order_row.html", {"order": selectors.order_of(request.user, pk)})


# A book's rows read again at once (``rows``): at most this many ids a request.
ROWS_MAX = 100
_ROW_ID = re.compile(r"[0-9]{1,18}")


@login_required
@require_GET
def rows(request):
    """Several of the book's rows at once (``?id=1&id=2``): those of a book whose socket connected
    again that its fresh copy no longer lists (a filtered book's orders finished meanwhile, rows
    pushed beyond its first page), in one request, not one a row. Another trader's ids are left out."""
    ids = request.GET.getlist("id")
    if not 0 < len(ids) <= ROWS_MAX or not all(_ROW_ID.fullmatch(pk) for pk in ids):
        return HttpResponseBadRequest(f"id: give 1 to {ROWS_MAX} order ids.", content_type="text/plain")
    orders = selectors.orders_of(request.user).filter(pk__in=[int(pk) for pk in ids])
    return render(request, "orders/partials/order_rows.html", {"orders": orders})


@login_required
@require_POST
def cancel(request, pk):
    order = selectors.order_of(request.user, pk)
    refusal = lost = None
    try:
        services.order_cancel(order=order, actor=request.user, cause=_page_cause(request))
    except services.OrderActionRefused as exc:
        if exc.outcome_unknown:  # sent, and it may have been done: not "could not cancel"
            lost = f"Cancel of {order.reference} sent, but {exc.message[:1].lower()}{exc.message[1:]}"
        else:
            refusal = exc.message
    order.refresh_from_db()
    if _is_htmx(request):
        context = {"order": order, "refusal": refusal, "lost": lost}
        return render(request, "orders/partials/cancel_result.html", context)
    if lost:
        messages.warning(request, lost)
    elif refusal:
        messages.error(request, f"Could not cancel {order.reference}: {refusal}")
    elif order.status == Order.Status.CANCELLED:
        messages.success(request, f"Cancelled {order.reference}.")
    else:
        messages.success(request, f"Cancel of {order.reference} asked; the broker has not closed it yet.")
    return redirect("orders:detail", pk=order.pk)
