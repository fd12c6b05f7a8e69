from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import redirect
from django.urls import include, path, reverse

from accounts import views as account_views
from brokers import views as broker_views
from monitoring import health
from orders import webhooks as order_webhooks

from .api import api

# Every sign-in goes through our throttled, audited login page, the admin's too;
# the admin's logout is ours as well (below), so it is audited.
_admin_login = admin.site.login


def admin_login(request, extra_context=None):
    """The admin's own form is never shown nor taken: it checks a password with no throttle and no
    audit (a signed-in trader could guess a staff password there at will). Staff who are signed in
    get the admin's answer (its index); everyone else our login page, which checks ``next``."""
    if request.method == "GET" and admin.site.has_permission(request):
        return _admin_login(request, extra_context)
    return redirect_to_login(request.GET.get("next") or reverse("admin:index"))


def admin_password_change(request, extra_context=None):
    """The admin's own password change is never shown nor taken either: its "old password" was
    checked with no throttle and a change made there was not audited. Staff change theirs on the
    profile page, as traders do (throttled like the login, audited)."""
    return redirect("accounts:profile")


admin.site.login = admin_login
admin.site.password_change = admin_password_change
admin.site.site_header = "Trading platform desk"

handler500 = "tradingplatform.errors.server_error"

urlpatterns = [
    path("", account_views.home, name="home"),
    path("login/", account_views.login_view, name="login"),
    path("logout/", account_views.logout_view, name="logout"),
    path("accounts/", include("accounts.urls")),
    path("brokers/", include("brokers.urls")),
    path("orders/", include("orders.urls")),
    path("", include("orders.source_urls")),
    path("", include("portfolio.urls")),
    path("hooks/strategies/<int:pk>/", order_webhooks.strategy_signal, name="strategy_webhook"),
    path("hooks/kite/postback/", broker_views.kite_postback, name="kite_postback"),
    path("api/v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("admin/logout/", account_views.logout_view),  # audited like every logout
    path("admin/", admin.site.urls),
]
