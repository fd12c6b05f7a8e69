import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingplatform.settings")

application = get_wsgi_application()

from tradingplatform import startup  # noqa: E402

startup.app_loaded()
