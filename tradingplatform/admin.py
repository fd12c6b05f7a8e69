"""What the apps' admins share."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows that change only through their services (orders, fills, positions, the exchange's own
    books, the audit log): staff read them here. An edit or a delete here would go around the rules
    those services keep (a deleted fill is recorded again from the broker and counted twice)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ActionsOnlyAdmin(admin.ModelAdmin):
    """Rows staff change only through the list's actions (end a session, revoke a key), every
    field read-only: the change page has no Save, and a Save sent anyway writes nothing. Saving
    would write back the whole row as this request read it, undoing a change made meanwhile (a
    session ended, a key revoked, its last use recorded)."""

    _NO_SAVE = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, {**self._NO_SAVE, **(extra_context or {})})

    def save_model(self, request, obj, form, change):
        pass  # every field is read-only: nothing of the form to save
