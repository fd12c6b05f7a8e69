"""Routes of the Kite-compatible face, at the host root like Kite's."""

from django.urls import path

from . import face

urlpatterns = [
    path("connect/login", face.connect_login, name="paper-connect-login"),
    path("session/token", face.session_token),
    path("user/profile", face.user_profile),
    path("user/margins", face.user_margins),
    path("user/margins/<str:segment>", face.user_margins),
    path("orders", face.orders),
    path("orders/<str:segment>", face.order_place_or_history),
    path("orders/<str:order_id>/trades", face.order_trades),
    path("orders/<str:variety>/<str:order_id>", face.order_modify_or_cancel),
    path("trades", face.trades),
    path("portfolio/positions", face.positions),
    path("portfolio/holdings", face.holdings),
    path("quote", face.quote),
    path("quote/ohlc", face.quote_ohlc),
    path("quote/ltp", face.quote_ltp),
    path("instruments", face.instruments),
    path("instruments/<str:exchange>", face.instruments),
]
