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
