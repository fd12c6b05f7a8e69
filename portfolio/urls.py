from django.urls import path

from . import views

app_name = "portfolio"

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/fragments/", views.dashboard_fragments, name="dashboard_fragments"),
    path("portfolio/", views.portfolio, name="portfolio"),
    path("trades/", views.trades, name="trades"),
    path("monitoring/", views.monitoring, name="monitoring"),
]
