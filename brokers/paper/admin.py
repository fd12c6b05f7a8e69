from django import forms
from django.contrib import admin
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError

from tradingplatform import numbers
from tradingplatform.admin import ReadOnlyAdmin

from . import engine
from .models import PaperClient, PaperInstrument, PaperOrder, PaperTrade

# The client's settings on its admin page, in the groups it shows them in.
KITE_APP = ("api_key", "api_secret", "redirect_url", "postback_url", "session_ttl_s")
FUNDS = ("opening_funds", "cash")
# Shares of calls (0-1) that a fault knob hits.
SHARES = ("error_rate", "timeout_rate", "rejection_rate")
FAULT_KNOBS = ("latency_ms", "error_rate", "timeout_rate", "rejection_rate", "rate_limit_per_s", "market_closed")


class PaperClientForm(forms.ModelForm):
    new_password = forms.CharField(
        required=False, widget=forms.PasswordInput, help_text="For the Kite-style login page; blank keeps it."
    )

    class Meta:
        model = PaperClient
        fields = ["user_id", "name", *KITE_APP, *FUNDS, *FAULT_KNOBS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Fills change the cash while the page is open: the page posts the cash it showed too, so
        # the save can tell a cash staff typed from one the fills have moved on since.
        if "cash" in self.fields:  # a page read-only to its staff (view only) has none
            self.fields["cash"].show_hidden_initial = True

    def clean(self):
        cleaned = super().clean()
        # As the table's constraints hold them, said on the field (the database's own refusal names
        # only its constraint, at the top of the page).
        for name in SHARES:
            if cleaned.get(name) is not None and not 0 <= cleaned[name] <= 1:
                self.add_error(name, "A share from 0 (never) to 1 (every call).")
        return cleaned

    def save(self, commit=True):
        client = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            client.password = make_password(self.cleaned_data["new_password"])
        if commit:
            client.save()
        return client


@admin.register(PaperClient)
class PaperClientAdmin(admin.ModelAdmin):
    """The exchange's clients: their app key and secret (the exchange's own), funds and fault knobs."""

    form = PaperClientForm
    formfield_overrides = numbers.NUMBER_FIELDS
    list_display = ("user_id", "name", "api_key", "cash", "latency_ms", "error_rate", "timeout_rate", "rejection_rate")
    search_fields = ("user_id", "name", "api_key")
    fieldsets = (
        (None, {"fields": ("user_id", "name", "new_password")}),
        ("Kite app", {"fields": KITE_APP}),
        ("Funds", {"fields": FUNDS}),
        ("Fault knobs", {"fields": FAULT_KNOBS}),
    )

    def get_readonly_fields(self, request, obj=None):
        # The id its broker accounts connect with (and the exchange tells its fills under): fixed once
        # it exists, as a broker account's is. Changed, the account's next login made a new, empty
        # client under the old id, the trader's orders and fills left with this one.
        readonly = super().get_readonly_fields(request, obj)
        return readonly if obj is None else (*readonly, "user_id")

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        # Only what staff changed: writing back the rest as the page showed it would undo what the
        # exchange wrote meanwhile (the cash its fills paid and received).
        columns = {field.name for field in obj._meta.concrete_fields}
        fields = [name for name in form.changed_data if name in columns]
        if form.cleaned_data.get("new_password"):
            fields.append("password")
        if fields:
            obj.save(update_fields=fields)


class PaperInstrumentForm(forms.ModelForm):
    """Held to what the exchange needs of an instrument (``engine.instrument_check``), naming the field."""

    def clean(self):
        cleaned = super().clean()
        try:
            engine.instrument_check({name: cleaned.get(name) for name in cleaned if name not in self.errors})
        except ValidationError as error:
            self.add_error(None, error)
        return cleaned


@admin.register(PaperInstrument)
class PaperInstrumentAdmin(admin.ModelAdmin):
    form = PaperInstrumentForm
    formfield_overrides = numbers.NUMBER_FIELDS
    list_display = ("tradingsymbol", "exchange", "last_price", "bid", "ask", "previous_close", "lot_size", "tick_size")
    list_filter = ("exchange", "instrument_type")
    search_fields = ("tradingsymbol", "name")
    # Set as the feed sets them (``engine.market_set``), when staff change one of them.
    QUOTE = ("last_price", "bid", "ask")
    # What names it, to the platform (which loads and prices its instruments by exchange and symbol)
    # and to every order: fixed once it exists. Renamed, the exchange knew none of what traders held
    # (their exits rejected as unknown) and its ticks priced a symbol the platform did not have.
    IDENTITY = ("instrument_token", "exchange_token", "exchange", "tradingsymbol")

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return readonly if obj is None else (*readonly, *self.IDENTITY)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # The ticks move the quote while the page is open: the page posts the values it showed too,
        # so the save can tell a value staff typed from one the market has moved on since.
        for field in form.base_fields.values():
            field.show_hidden_initial = True
        return form

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        # Only what staff changed: writing back the rest as the page showed it would put the market
        # back where it was when the page was opened (the next MARKET order filled at that ask).
        columns = {field.name for field in obj._meta.concrete_fields}
        quote = [name for name in self.QUOTE if name in form.changed_data]
        fields = [name for name in form.changed_data if name in columns and name not in self.QUOTE]
        if fields:
            obj.save(update_fields=fields)
        if quote:
            typed = {name: form.cleaned_data[name] for name in quote}
            stored = PaperInstrument.objects.get(pk=obj.pk)
            engine.market_set(
                exchange=stored.exchange,
                tradingsymbol=stored.tradingsymbol,
                last_price=typed.get("last_price", stored.last_price),
                bid=typed.get("bid"),
                ask=typed.get("ask"),
            )


@admin.register(PaperOrder)
class PaperOrderAdmin(ReadOnlyAdmin):
    list_display = ("order_id", "client", "instrument", "transaction_type", "order_type", "quantity", "price", "status")
    list_filter = ("status", "order_type")
    search_fields = ("order_id", "tag", "client__user_id")


@admin.register(PaperTrade)
class PaperTradeAdmin(ReadOnlyAdmin):
    list_display = ("trade_id", "order", "client", "instrument", "transaction_type", "quantity", "price", "filled_at")
    search_fields = ("trade_id", "order__order_id", "client__user_id")
