from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self):
        from brokers.services import account_activity_listeners
        from tradingplatform.logs import connect_task_signals

        from . import signals
        from .services import account_activity

        if account_activity not in account_activity_listeners:
            account_activity_listeners.append(account_activity)
        # A user's websockets close when their sessions end (the consumer checks the user only on connect).
        signals.connect()
        # A task's log lines carry the id of the request that queued it.
        connect_task_signals()
