"""Closes a user's websockets when their sessions end: a logout, a deactivation, a password change, a deletion;
and has the pushes read a user's timezone again when it is saved.

Connected in ``MonitoringConfig.ready``; the sockets are closed by ``broadcast.user_sockets_close``.
Code that changes ``is_active`` or ``password`` with ``QuerySet.update`` calls it itself.
"""

from django.contrib.auth import get_user_model, user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save

from . import broadcast

SESSION_FIELDS = frozenset({"is_active", "password"})


def _logged_out(sender, request, user, **_kwargs):
    if user is None:
        return  # an anonymous visitor: no sockets
    session = getattr(request, "session", None)
    broadcast.user_sockets_close(user_id=user.pk, session_key=session.session_key if session is not None else None)


def _user_saving(sender, instance, raw=False, update_fields=None, **_kwargs):
    # Compared with the stored row before it changes; acted on in post_save, once the row is written.
    instance._sessions_end = False
    if raw or instance.pk is None:
        return
    if update_fields is not None and not SESSION_FIELDS.intersection(update_fields):
        return  # e.g. last_login on every web login
    stored = sender._default_manager.filter(pk=instance.pk).values_list("is_active", "password").first()
    if stored is not None:
        was_active, password = stored
        instance._sessions_end = (was_active and not instance.is_active) or password != instance.password


def _user_saved(sender, instance, update_fields=None, **_kwargs):
    if instance.__dict__.pop("_sessions_end", False):
        broadcast.user_sockets_close(user_id=instance.pk)
    if update_fields is None or "timezone" in update_fields:
        broadcast.user_timezone_forget(instance.pk)


def _user_deleted(sender, instance, **_kwargs):
    broadcast.user_sockets_close(user_id=instance.pk)


def connect() -> None:
    user_model = get_user_model()
    user_logged_out.connect(_logged_out, dispatch_uid="monitoring-sockets-logged-out")
    pre_save.connect(_user_saving, sender=user_model, dispatch_uid="monitoring-sockets-user-saving")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="monitoring-sockets-user-saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="monitoring-sockets-user-deleted")
