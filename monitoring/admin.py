from django.contrib import admin

from tradingplatform.admin import ReadOnlyAdmin

from .models import AccountRun, BrokerSnapshot, MonitoringRun


class AccountRunInline(admin.TabularInline):
    model = AccountRun
    extra = 0
    can_delete = False
    readonly_fields = ("account", "status", "started_at", "finished_at", "step_ms", "actions", "errors")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account")


@admin.register(MonitoringRun)
class MonitoringRunAdmin(ReadOnlyAdmin):
    list_display = ("pk", "trigger", "started_at", "finished_at", "accounts")
    inlines = [AccountRunInline]


@admin.register(AccountRun)
class AccountRunAdmin(ReadOnlyAdmin):
    list_display = ("account", "status", "started_at", "finished_at", "run")
    list_select_related = ("account", "run")
    list_filter = ("status",)
    search_fields = ("account__label",)


@admin.register(BrokerSnapshot)
class BrokerSnapshotAdmin(ReadOnlyAdmin):
    """Exactly what the broker returned (what explains a number): written only by the cycle."""

    list_display = ("account", "kind", "fetched_at")
    list_filter = ("kind",)
