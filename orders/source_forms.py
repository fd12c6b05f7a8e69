"""Forms for baskets, scheduled orders and strategies. They parse; the sources module decides."""

import uuid

from django import forms
from django.db.models import Q

from accounts.models import BrokerAccount
from brokers.errors import RejectKind
from brokers.selectors import instrument_by_symbol
from tradingplatform import numbers
from tradingplatform.forms import OneTimeTokenForm, watch_changes

from . import sources
from .forms import PriceField, whole_number
from .models import ORDER_TYPES, PRODUCTS, SIDES, VALIDITIES, WEEKDAY_NAMES, ScheduledOrder, Strategy

WEEKDAYS = list(enumerate(WEEKDAY_NAMES))


class InstrumentField(forms.CharField):
    """``INFY`` (NSE) or ``NFO:NIFTY26DECFUT``, resolved to an Instrument."""

    def __init__(self, **kwargs):
        kwargs.setdefault("max_length", 80)
        kwargs.setdefault("help_text", "Symbol, e.g. INFY or NFO:NIFTY26DECFUT.")
        super().__init__(**kwargs)

    def clean(self, value):
        text = super().clean(value).strip().upper()
        exchange, _, symbol = text.rpartition(":")
        instrument = instrument_by_symbol(exchange or "NSE", symbol)
        if instrument is None:
            raise forms.ValidationError("No such instrument.")
        return instrument


class AccountsField(forms.ModelMultipleChoiceField):
    """The trader's active accounts, and ``kept`` (what a basket or strategy being edited has now),
    deactivated ones among them marked so: saving keeps them (renaming must not drop an account), and
    a deactivated one not kept is refused by name."""

    def __init__(self, user, kept=(), **kwargs):
        self.owner, self.kept = user, {account.pk for account in kept}
        queryset = BrokerAccount.objects.filter(owner=user).filter(Q(is_active=True) | Q(pk__in=self.kept))
        super().__init__(queryset=queryset.order_by("label"), widget=forms.CheckboxSelectMultiple, **kwargs)

    def label_from_instance(self, account):
        return account.label if account.is_active else f"{account.label} (deactivated)"

    def clean(self, value):
        # More digits than any id has: no account, and not looked up (SQLite cannot hold the number).
        for pk in value or ():
            if str(pk).strip().isdecimal() and whole_number(pk) is None:
                raise forms.ValidationError(
                    self.error_messages["invalid_choice"], code="invalid_choice", params={"value": pk}
                )
        try:
            return super().clean(value)
        except forms.ValidationError as error:
            if error.code != "invalid_choice":
                raise
            # One deactivated since the page was shown: say which, not "not one of the choices".
            ids = [pk for pk in value or () if str(pk).isdigit()]
            for account in BrokerAccount.objects.filter(owner=self.owner, pk__in=ids, is_active=False):
                raise forms.ValidationError(f"{account.label} is deactivated; reactivate it first.") from None
            raise


class OrderSpecForm(forms.Form):
    instrument = InstrumentField()
    # Each choice starts at what its select shows first, so a blank row left as it is has not changed.
    side = forms.ChoiceField(choices=SIDES, initial="BUY")
    quantity = numbers.IntegerField(min_value=1)
    order_type = forms.ChoiceField(choices=ORDER_TYPES, initial="MARKET")
    product = forms.ChoiceField(choices=PRODUCTS, initial="MIS")
    price = PriceField(required=False, max_digits=14, decimal_places=2, min_value=0)
    trigger_price = PriceField(required=False, max_digits=14, decimal_places=2, min_value=0)

    def spec(self) -> dict:
        data = self.cleaned_data
        return {
            "instrument": data["instrument"],
            "side": data["side"],
            "quantity": data["quantity"],
            "order_type": data["order_type"],
            "product": data["product"],
            "validity": data.get("validity", "DAY"),
            "price": data.get("price"),
            "trigger_price": data.get("trigger_price"),
        }


class BasketForm(OneTimeTokenForm):
    """The same new-basket form sent twice makes one basket (``sources.basket_save``)."""

    name = forms.CharField(max_length=100)

    def __init__(self, *args, user, basket=None, **kwargs):
        super().__init__(*args, **kwargs)
        kept = basket.accounts.all() if basket else ()
        self.fields["accounts"] = AccountsField(
            user, kept=kept, required=False, help_text="Where “Place” sends it by default."
        )
        self.fields["token"].required = False  # an edit, or a page rendered before it had one
        if basket is not None:  # an edit writes only what the trader changed on the page
            watch_changes(self, ["name", "accounts"])

    def create_key(self) -> str | None:
        token = self.cleaned_data.get("token")
        return f"ui:{token}" if token else None

    def changes(self, items) -> dict:
        """An edit's changes (``sources.basket_change``): only what the trader changed on the page,
        ``items`` (the page's rows, as specs) when a row was changed, added or taken off there; the
        rest stays as it is now (an account taken off through the API meanwhile, or in another tab)."""
        changes = {"name": self.cleaned_data["name"]} if "name" in self.changed_data else {}
        if "accounts" in self.changed_data:
            changes["account_ids"] = [account.pk for account in self.cleaned_data["accounts"]]
        if items.has_changed():
            changes["items"] = [item.spec() for item in items.kept()]
        return changes


class BasketItemForm(OrderSpecForm):
    # An item may be IOC (the API takes it): saving the page must not make it DAY. Not sent (a page
    # from before it had the field), DAY as before.
    validity = forms.TypedChoiceField(choices=VALIDITIES, initial="DAY", required=False, empty_value="DAY")

    def __init__(self, *args, watch=False, **kwargs):
        super().__init__(*args, **kwargs)
        if watch:  # a basket's edit: its rows post what they showed, so a save tells a changed row
            watch_changes(self, list(self.fields))


class BaseBasketItemFormSet(forms.BaseFormSet):
    def kept(self) -> list[BasketItemForm]:
        """The rows that are items: filled in, not ticked to be removed."""
        return [item for item in self if item.cleaned_data and not item.cleaned_data.get("DELETE")]


BasketItemFormSet = forms.formset_factory(
    BasketItemForm, formset=BaseBasketItemFormSet, extra=1, can_delete=True, max_num=100, validate_max=True
)


class BasketPlaceForm(forms.Form):
    token = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["accounts"] = AccountsField(user, required=False, help_text="Blank: the basket's accounts.")

    def renew_token(self) -> None:
        """A fresh token for the form shown again after its token was refused (used for another
        placement, or none sent): sent as it was, every Place (a reload too) would be refused again."""
        self.data = self.data.copy()
        self.data["token"] = uuid.uuid4().hex


class ScheduledForm(OneTimeTokenForm, OrderSpecForm):
    """The same form sent twice makes one scheduled order."""

    recurrence = forms.ChoiceField(choices=ScheduledOrder.Recurrence.choices)
    run_on = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Date")
    time_of_day = forms.TimeField(widget=forms.TimeInput(attrs={"type": "time", "step": 1}), label="Time")
    weekdays = forms.TypedMultipleChoiceField(
        choices=WEEKDAYS, coerce=int, required=False, widget=forms.CheckboxSelectMultiple
    )
    grace_s = numbers.IntegerField(
        min_value=0, max_value=86400, initial=0, label="Grace (seconds)", help_text="Still place it this late."
    )
    timezone = forms.ChoiceField(choices=lambda: [(name, name) for name in sorted(sources.zone_names())])

    field_order = ["account", "instrument", "side", "quantity", "order_type", "product", "price", "trigger_price"]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"] = forms.ModelChoiceField(
            queryset=BrokerAccount.objects.filter(owner=user, is_active=True)
        )
        self.fields["timezone"].initial = user.timezone
        self.order_fields(self.field_order)


class StrategyForm(OneTimeTokenForm, forms.ModelForm):
    """The same new-strategy form sent twice makes one strategy (``sources.strategy_save``); the
    repeat keeps the secret the first answer showed."""

    retryable_kinds = forms.MultipleChoiceField(
        choices=[(kind, kind) for kind in RejectKind.ALL],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=f"None ticked: {', '.join(RejectKind.RETRYABLE_BY_NATURE)}.",
    )

    class Meta:
        model = Strategy
        formfield_callback = numbers.formfield
        fields = [
            "name",
            "stop_loss",
            "stop_loss_unit",
            "take_profit",
            "take_profit_unit",
            "trailing_step",
            "reentry_enabled",
            "max_reentries",
            "chase_after_s",
            "chase_max_ticks",
            "chase_max_percent",
            "max_retries",
            "retryable_kinds",
            "is_active",
        ]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        kept = list(self.instance.accounts.all()) if self.instance.pk else []
        self.fields["accounts"] = AccountsField(user, kept=kept, required=False)
        self.fields["accounts"].initial = kept
        self.fields["token"].required = False  # an edit, or a page rendered before it had one
        if self.instance.pk:  # an edit writes only what the trader changed on the page
            watch_changes(self, [*self.Meta.fields, "accounts"])

    def create_key(self) -> str | None:
        token = self.cleaned_data.get("token")
        return f"ui:{token}" if token else None

    def _post_clean(self):
        # The service validates the whole strategy (names are unique per owner).
        pass

    def params(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.Meta.fields if name != "name"}

    def changes(self) -> dict:
        """An edit's changes (``sources.strategy_change``): only what the trader changed on the
        page; the rest stays as it is now (a pause made through the API meanwhile, or in another tab)."""
        changes = {name: self.cleaned_data[name] for name in self.Meta.fields if name in self.changed_data}
        if "accounts" in self.changed_data:
            changes["account_ids"] = [account.pk for account in self.cleaned_data["accounts"]]
        return changes
