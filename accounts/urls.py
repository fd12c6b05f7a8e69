from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("brokers/", views.broker_list, name="broker_list"),
    path("brokers/add/", views.broker_create, name="broker_create"),
    path("brokers/<int:pk>/edit/", views.broker_edit, name="broker_edit"),
    path("brokers/<int:pk>/deactivate/", views.broker_deactivate, name="broker_deactivate"),
    path("brokers/<int:pk>/reactivate/", views.broker_reactivate, name="broker_reactivate"),
    path("api-keys/", views.api_keys, name="api_keys"),
    path("api-keys/<int:pk>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("profile/", views.profile, name="profile"),
]
