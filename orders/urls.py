from django.urls import path

from . import views

app_name = "orders"

urlpatterns = [
    path("", views.order_book, name="book"),
    path("new/", views.ticket, name="ticket"),
    path("instruments/", views.instrument_options, name="instrument_options"),
    path("instruments/<int:pk>/", views.instrument_pick, name="instrument_pick"),
    path("new/account/", views.account_pick, name="account_pick"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/modify/", views.modify, name="modify"),
    path("<int:pk>/row/", views.row, name="row"),
    path("rows/", views.rows, name="rows"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
]
