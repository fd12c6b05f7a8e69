"""Forms of the order pages: they parse input; ``services.order_check`` decides what is allowed."""

from datetime import datetime
from decimal import Decimal, InvalidOperation

from django import forms

from accounts.models import BrokerAccount
from accounts.selectors import broker_accounts_of
from brokers.base import IST, stop_market_allowed
from brokers.models import Instrument
from portfolio.selectors import holds_nrml_equity
from tradingplatform import numbers
from tradingplatform.forms import OneTimeTokenForm

from .models import ORDER_TYPES, PRODUCTS, SIDES, VALIDITIES, Order

PLAIN_TYPES = ("MARKET", "LIMIT")
STOP_TYPES = ("SL", "SL-M")


def product_choices(instrument: Instrument | None, *, nrml_held: bool = False) -> list[tuple[str, str]]:
    """CNC is equity delivery and NRML derivatives' carry forward: equity offers delivery and
    intraday, a derivative intraday and carry forward. ``nrml_held``: the trader holds an NRML
    position in the equity, taken before NRML was refused on it: NRML is offered too, as only an
    NRML order closes it (the service refuses one that would open more)."""
    if instrument is None:
        return list(PRODUCTS)
    if instrument.instrument_type == "EQ":
        return [(value, label) for value, label in PRODUCTS if value != "NRML" or nrml_held]
    return [(value, label) for value, label in PRODUCTS if value != "CNC"]


def order_type_choices(instrument: Instrument | None, *, kept: str | None = None) -> list[tuple[str, str]]:
    """The order types ``instrument`` takes: not SL-M on an option (Kite blocks it there; the
    service refuses it too). ``kept``: a type offered whatever the instrument (an order's own, so
    its modify form shows what it is)."""
    if instrument is None or stop_market_allowed(instrument):
        return list(ORDER_TYPES)
    return [(value, label) for value, label in ORDER_TYPES if value != "SL-M" or value == kept]


# Digits read as a whole number: more than an id or a quantity ever has is none (and int() reads
# no more than 4300 digits).
MAX_NUMBER_DIGITS = 18


def whole_number(value) -> int | None:
    """A whole number typed or sent as text, or None."""
    value = str(value or "").strip()
    # isdecimal, not isdigit: "²" is a digit but no number int() reads.
    return int(value) if value.isdecimal() and len(value) <= MAX_NUMBER_DIGITS else None


def instrument_from(value) -> Instrument | None:
    pk = whole_number(value)
    return Instrument.objects.filter(pk=pk).first() if pk is not None else None


class PriceField(numbers.DecimalField):
    """A price of at most two places; zeros after them are not places ("1454.8000" is 1454.80)."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is not None and not value.is_finite():
            # Refused here, not first by ``validate``: a signalling NaN cannot even be compared.
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        if value is not None and value.as_tuple().exponent < -self.decimal_places:
            try:
                shorter = value.quantize(Decimal(1).scaleb(-self.decimal_places))
            except InvalidOperation:  # more digits than decimal arithmetic holds: ``validate`` refuses it
                return value
            if shorter == value:
                return shorter
        return value


def price_field(label: str) -> forms.DecimalField:
    return PriceField(
        label=label,
        required=False,
        max_digits=14,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal", "min": "0"}),
    )


class OrderTicketForm(OneTimeTokenForm):
    account = forms.ModelChoiceField(queryset=None, empty_label=None)
    instrument = forms.ModelChoiceField(
        queryset=Instrument.objects.all(),
        widget=forms.HiddenInput,
        error_messages={"required": "Search for an instrument and choose one."},
    )
    side = forms.ChoiceField(choices=SIDES, initial="BUY", widget=forms.RadioSelect)
    quantity = numbers.IntegerField(widget=forms.NumberInput(attrs={"min": "1", "inputmode": "numeric"}))
    order_type = forms.ChoiceField(label="Order type", choices=ORDER_TYPES, initial="MARKET")
    product = forms.ChoiceField(choices=PRODUCTS, initial="MIS")
    validity = forms.ChoiceField(choices=VALIDITIES, initial="DAY")
    price = price_field("Price")
    trigger_price = price_field("Trigger price")
    # A second submit of the same ticket returns the first order.
    token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={"required": "This ticket is out of date; check it and submit again."},
    )

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        accounts = broker_accounts_of(user).filter(is_active=True)
        self.fields["account"].queryset = accounts
        self.chosen_account = self._account_from(accounts)
        self.chosen_instrument = instrument_from(self["instrument"].value())
        held = holds_nrml_equity(user, self.chosen_instrument)
        self.fields["product"].choices = product_choices(self.chosen_instrument, nrml_held=held)
        # Offered as the account allows them too; one sent anyway is refused by the service,
        # naming the account, not as "not one of the available choices".
        self.fields["product"].widget.choices = self._products_allowed(self.fields["product"].choices)
        if not self.is_bound:
            self.initial["product"] = self.product_kept(self.get_initial_for_field(self.fields["product"], "product"))
        # Offered as the instrument takes them; one sent anyway is refused by the service, saying why.
        self.fields["order_type"].widget.choices = order_type_choices(self.chosen_instrument)
        if not self.is_bound and self.chosen_instrument is not None:
            self.initial.setdefault("quantity", self.chosen_instrument.lot_size)
        self.initial.setdefault("quantity", 1)

    def _account_from(self, accounts) -> BrokerAccount | None:
        """The account the ticket shows chosen: the one sent or given, else the first (as the
        select shows it when it has no other)."""
        # Not through ``self["account"]``: its bound field would keep the initial from before it is set here.
        sent = self.data.get(self.add_prefix("account")) if self.is_bound else self.initial.get("account")
        pk = whole_number(sent)
        chosen = accounts.filter(pk=pk).first() if pk is not None else None
        chosen = chosen or accounts.first()
        if chosen is not None and not self.is_bound:
            self.initial["account"] = chosen.pk
        return chosen

    def _products_allowed(self, choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
        account = self.chosen_account
        if account is None:
            return choices
        allowed = [(value, label) for value, label in choices if value in account.allowed_products]
        if not allowed:
            what = self.chosen_instrument.tradingsymbol if self.chosen_instrument else "this instrument"
            self.fields["product"].help_text = (
                f"{account.label} allows {', '.join(account.allowed_products)}, none of which {what} takes: "
                "choose another account or instrument."
            )
        return allowed

    @classmethod
    def for_instrument(
        cls, user, instrument: Instrument, *, account=None, product=None, quantity=None, order_type=None
    ) -> "OrderTicketForm":
        """The ticket's fields for a newly chosen instrument, keeping what still fits it (and the account)."""
        form = cls(user, initial={"instrument": instrument.pk, "account": account})
        product = form.product_kept(product)
        if order_type not in dict(form.fields["order_type"].widget.choices):
            # SL-M on an option: its stop-loss limit, the stop it takes.
            order_type = "SL" if order_type == "SL-M" else "MARKET"
        form.initial["order_type"] = order_type
        quantity = whole_number(quantity)
        if not quantity or quantity % instrument.lot_size:
            quantity = instrument.lot_size
        form.initial.update(product=product, quantity=quantity)
        return form

    @classmethod
    def for_account(cls, user, account, *, instrument=None, product=None) -> "OrderTicketForm":
        """The ticket's product field for a newly chosen account: the products it allows that the
        instrument takes, keeping the one chosen if it is among them."""
        form = cls(user, initial={"account": account, "instrument": instrument})
        form.initial["product"] = form.product_kept(product)
        return form

    def product_kept(self, product) -> str | None:
        """``product`` if the ticket offers it, else MIS if it does, else the first it offers."""
        offered = [value for value, _ in self.fields["product"].widget.choices]
        for kept in (product, "MIS"):
            if kept in offered:
                return kept
        return offered[0] if offered else None

    @property
    def spec(self) -> dict:
        """What ``order_place`` takes from the ticket (blank prices are None: the service decides)."""
        return {
            name: self.cleaned_data[name]
            for name in (
                "account",
                "instrument",
                "side",
                "quantity",
                "order_type",
                "product",
                "validity",
                "price",
                "trigger_price",
            )
        }


class OrderModifyForm(forms.Form):
    quantity = numbers.IntegerField(widget=forms.NumberInput(attrs={"min": "1", "inputmode": "numeric"}))
    order_type = forms.ChoiceField(label="Order type")
    price = price_field("Price")
    trigger_price = price_field("Trigger price")

    def __init__(self, *args, order: Order, **kwargs):
        kwargs.setdefault(
            "initial",
            {
                "quantity": order.quantity,
                "order_type": order.order_type,
                "price": order.price,
                "trigger_price": order.trigger_price,
            },
        )
        kwargs.setdefault("auto_id", "modify_%s")
        super().__init__(*args, **kwargs)
        self.order = order
        # Each field carries the value the page showed, so only what the trader changed is sent
        # (``changes``): a price a chase or another tab moved meanwhile is not put back, and a form
        # older than the order is refused (``clean``).
        for field in self.fields.values():
            field.show_hidden_initial = True
        # A stop order stays a stop order, a plain one plain (the broker's rule too).
        compatible = STOP_TYPES if order.order_type in STOP_TYPES else PLAIN_TYPES
        self.fields["order_type"].choices = [
            (value, label)
            for value, label in order_type_choices(order.instrument, kept=order.order_type)
            if value in compatible
        ]
        # The broker holds a triggered stop as the plain order it became: its trigger and type are
        # shown fixed. A form shown after it triggered sends neither (a browser sends no disabled
        # field): they are taken as the order has them, not refused as missing. One that sends them
        # (shown before it triggered) has a change refused by ``services._modify``, naming the
        # field, not dropped as a disabled field's would be.
        if order.is_triggered:
            for name, what in (("trigger_price", "trigger"), ("order_type", "order type")):
                if self.is_bound and self.add_prefix(name) in self.data:
                    continue
                if name == "order_type":
                    self.fields[name].choices = [(order.order_type, order.get_order_type_display())]
                self.fields[name].disabled = True
                self.fields[name].widget.attrs["title"] = f"This stop has triggered: its {what} cannot change."

    def clean(self):
        # The order changed since the page showed it (a fill, a chase, another tab): what the trader
        # left as shown may not be what they mean now (a quantity cut back to the 10 shown, while
        # the order is at 20, would be no change). They look again at the order as it is.
        moved = [name for name in self.fields if self._shown_differs(name)]
        if moved:
            self._show_as_now(moved)
            raise forms.ValidationError(
                f"This order has changed since this form was shown "
                f"({', '.join(self.fields[name].label or name for name in moved).lower()}): "
                "check the values against the order as it is now, and save again."
            )
        # The page hides the prices the chosen type takes none of; what they still hold is not sent.
        data = super().clean()
        kind = data.get("order_type")
        if kind not in ("LIMIT", "SL"):
            data["price"] = None
        if kind not in ("SL", "SL-M"):
            data["trigger_price"] = None
        # A price the trader emptied is no "keep it as it is" (the service's reading of a value not
        # given): the rest of the change would be made with the old price, and they not told.
        for name, takes, what in (
            ("price", ("LIMIT", "SL"), "price"),
            ("trigger_price", ("SL", "SL-M"), "trigger price"),
        ):
            if kind in takes and name in data and data[name] is None and name in self.changed_data:
                self.add_error(name, f"A {kind} order needs a {what} above 0.")
        return data

    def _shown_differs(self, name: str) -> bool:
        """Whether the value this form showed for ``name`` (its hidden initial) is not the order's now."""
        raw = self.data.get(self.add_initial_prefix(name))
        if raw is None:
            return False  # a form without what it showed (a client of its own): nothing to compare
        try:
            shown = self.fields[name].to_python(raw)
        except forms.ValidationError:
            return True
        return shown != self.get_initial_for_field(self.fields[name], name)

    def _show_as_now(self, moved: list[str]) -> None:
        """The form shown with the refusal carries the order's values now as what it showed (else
        saving it again is refused again, for ever); a moved field the trader left as shown shows
        the order's value now (else saving again would put back the value the order moved from)."""
        self.data = self.data.copy()
        for name in moved:
            now = self.get_initial_for_field(self.fields[name], name)
            now = "" if now is None else str(now)
            if self._left_as_shown(name):
                self.data[self.add_prefix(name)] = now
            self.data[self.add_initial_prefix(name)] = now

    def _left_as_shown(self, name: str) -> bool:
        field = self.fields[name]
        try:
            return field.to_python(self.data.get(self.add_prefix(name))) == field.to_python(
                self.data.get(self.add_initial_prefix(name))
            )
        except forms.ValidationError:
            return False

    def changes(self) -> dict:
        """What the trader changed from what the page showed, cleaned."""
        return {name: self.cleaned_data[name] for name in self.changed_data}


class OrderFilterForm(forms.Form):
    STATUS_CHOICES = [("", "Any status"), ("open", "Open (not final)"), *Order.Status.choices]
    DATE_CHOICES = [("today", "Today"), ("all", "All dates")]

    account = forms.ModelChoiceField(queryset=None, required=False, empty_label="All accounts")
    status = forms.ChoiceField(choices=STATUS_CHOICES, required=False)
    source = forms.ChoiceField(choices=[("", "Any source"), *Order.Source.choices], required=False)
    symbol = forms.CharField(max_length=64, required=False, widget=forms.TextInput(attrs={"placeholder": "Symbol"}))
    date = forms.ChoiceField(choices=DATE_CHOICES, required=False, initial="today")

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = broker_accounts_of(user)

    def selector_kwargs(self) -> dict:
        """Keyword arguments for ``selectors.orders_of``; a bad filter value is left out (and shown)."""
        self.is_valid()
        data = self.cleaned_data
        status = data.get("status") or None
        date = data.get("date") or "today"
        return {
            "account": data["account"].pk if data.get("account") else None,
            "status": status,
            "source": data.get("source") or None,
            "symbol": data.get("symbol") or None,
            # The trading day is the exchange's day (as in order references).
            "day": datetime.now(IST).date() if date == "today" else None,
        }
