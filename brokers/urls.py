from django.urls import path

from . import views

app_name = "brokers"

urlpatterns = [
    path("accounts/<int:pk>/connect/", views.connect, name="connect"),
    path("accounts/<int:pk>/disconnect/", views.disconnect, name="disconnect"),
    path("callback/", views.login_callback, name="login_callback"),
    path("instruments/", views.instruments, name="instruments"),
]
