from django.urls import path

from . import source_views as views

app_name = "sources"

urlpatterns = [
    path("baskets/", views.basket_list, name="basket_list"),
    path("baskets/new/", views.basket_edit, name="basket_create"),
    path("baskets/<int:pk>/", views.basket_detail, name="basket_detail"),
    path("baskets/<int:pk>/edit/", views.basket_edit, name="basket_edit"),
    path("baskets/<int:pk>/delete/", views.basket_delete, name="basket_delete"),
    path("scheduled/", views.scheduled_list, name="scheduled_list"),
    path("scheduled/<int:pk>/cancel/", views.scheduled_cancel, name="scheduled_cancel"),
    path("strategies/", views.strategy_list, name="strategy_list"),
    path("strategies/new/", views.strategy_edit, name="strategy_create"),
    path("strategies/<int:pk>/", views.strategy_detail, name="strategy_detail"),
    path("strategies/<int:pk>/edit/", views.strategy_edit, name="strategy_edit"),
    path("strategies/<int:pk>/secret/", views.strategy_rotate_secret, name="strategy_secret"),
]
