"""The Kite face as its own ASGI application: ``daphne -p 8001 brokers.paper.face_asgi:application``.

Same project settings; only the URLconf differs, so the face and the platform never
share routes.
"""

import os

import django
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler

FACE_URLCONF = "brokers.paper.face_urls"


class FaceASGIHandler(ASGIHandler):
    def create_request(self, scope, body_file):
        request, error = super().create_request(scope, body_file)
        if request is not None:
            request.urlconf = FACE_URLCONF
        return request, error


class FaceWSGIHandler(WSGIHandler):
    """The same face over WSGI, for a test server thread."""

    def get_response(self, request):
        request.urlconf = FACE_URLCONF
        return super().get_response(request)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradingplatform.settings")
django.setup(set_prefix=False)
application = FaceASGIHandler()
