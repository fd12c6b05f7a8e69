"""Order pages (being built)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.views.decorators.http import require_GET, require_POST


@login_required
@require_GET
def order_book(request):
    return HttpResponse("")


@login_required
def ticket(request):
    return HttpResponse("")


@login_required
@require_GET
def detail(request, pk):
    return HttpResponse("")


@login_required
@require_POST
def modify(request, pk):
    return HttpResponse("")


@login_required
@require_POST
def cancel(request, pk):
    return HttpResponse("")
