from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"

    def ready(self):
        from brokers.services import order_update_listeners

        from .services import order_broker_update

        # A broker's word on one of our orders is applied at once (brokers does not import orders).
        if order_broker_update not in order_update_listeners:
            order_update_listeners.append(order_broker_update)
