from django.conf import settings


def client_ip(request) -> str | None:
    """The caller's IP; X-Forwarded-For is trusted only when a proxy we run sets it."""
    if settings.USE_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None
