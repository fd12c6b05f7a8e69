from django.conf import settings


def client_ip(request) -> str | None:
    """The caller's IP; X-Forwarded-For is trusted only when a proxy we run sets it, and only its
    last entry (the address our proxy saw; the ones before it are whatever the client sent)."""
    if settings.USE_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.split(",")[-1].strip() or None
    return request.META.get("REMOTE_ADDR") or None
