from django.apps import AppConfig


class PortfolioConfig(AppConfig):
    name = "portfolio"
    verbose_name = "Portfolio"

    def ready(self):
        from brokers.services import fill_listeners, placed_fill_recorders

        from .services import fills_fast_path, fills_with_answer

        # Fills a broker hands us as they happen are recorded and pushed at once, and those its
        # answer to a placement carries are recorded with the answer (brokers does not import portfolio).
        if fills_fast_path not in fill_listeners:
            fill_listeners.append(fills_fast_path)
        if fills_with_answer not in placed_fill_recorders:
            placed_fill_recorders.append(fills_with_answer)
