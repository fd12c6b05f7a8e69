from django.apps import AppConfig


class PortfolioConfig(AppConfig):
    name = "portfolio"
    verbose_name = "Portfolio"

    def ready(self):
        from brokers.services import fill_listeners

        from .services import fills_fast_path

        # Fills a broker hands us as they happen are recorded and pushed at once (brokers does not import portfolio).
        if fills_fast_path not in fill_listeners:
            fill_listeners.append(fills_fast_path)
