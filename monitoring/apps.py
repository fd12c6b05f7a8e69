from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        from brokers.services import account_activity_listeners

        from .services import account_activity

        if account_activity not in account_activity_listeners:
            account_activity_listeners.append(account_activity)
