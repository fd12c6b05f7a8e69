from django import forms
from django.core.exceptions import ValidationError

from brokers import registry
from tradingplatform import numbers
from tradingplatform.forms import OneTimeTokenForm, watch_changes

from .models import PRODUCTS, BrokerAccount, User


def apply_validation_error(form: forms.Form, error: ValidationError) -> None:
    """Put a service's ValidationError onto the form, each message on its own field."""
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            form.add_error(field if field in form.fields else None, messages)
    else:
        form.add_error(None, error.messages)


class LoginForm(forms.Form):
    username = forms.CharField(
        max_length=150, widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"})
    )
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


def credential_fields(*, required_hint: str) -> dict[str, forms.Field]:
    """Write-only inputs: PasswordInput never renders a value back, even after an error."""
    fields = {}
    for credential in registry.all_credential_fields():
        brokers = [spec.label for spec in registry.BROKERS.values() if credential in spec.credential_fields]
        fields[credential.name] = forms.CharField(
            label=credential.label,
            required=False,
            max_length=512,
            strip=True,
            help_text=f"{', '.join(brokers)}. {required_hint}",
            widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        )
    return fields


class BrokerAccountBaseForm(forms.ModelForm):
    allowed_products = forms.MultipleChoiceField(
        choices=[(product, product) for product in PRODUCTS],
        widget=forms.CheckboxSelectMultiple,
        initial=list(PRODUCTS),
    )
    credential_hint = ""

    class Meta:
        model = BrokerAccount
        formfield_callback = numbers.formfield
        fields = ["label", "max_order_value", "max_quantity", "max_open_orders", "allowed_products", "copy_multiplier"]
        help_texts = {
            "max_order_value": "Largest single order value in rupees; blank for no limit.",
            "max_quantity": "Largest single order quantity; blank for no limit.",
            "max_open_orders": "Most orders open at once; blank for no limit.",
            "copy_multiplier": "Quantity multiplier when an order is copied to this account.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields.update(credential_fields(required_hint=self.credential_hint))

    @property
    def credentials(self) -> dict[str, str]:
        return {name: self.cleaned_data.get(name) or "" for name in self.credential_names}

    @property
    def credential_names(self) -> list[str]:
        return [credential.name for credential in registry.all_credential_fields()]

    @property
    def changes(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


class BrokerAccountCreateForm(OneTimeTokenForm, BrokerAccountBaseForm):
    """The same form sent twice adds one account (``services.broker_account_create``)."""

    credential_hint = "Stored encrypted and never shown again."

    class Meta(BrokerAccountBaseForm.Meta):
        fields = ["broker", "client_id", *BrokerAccountBaseForm.Meta.fields]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["token"].required = False  # a page rendered before it had one adds as before

    def _get_validation_exclusions(self):
        # Whether the client id is taken is the service's to say: taken by the account this very
        # form added (a double click), it is that account, not "already exists". A form with other
        # errors never reaches the service (nor is it a repeat of one that was added): it says so
        # with them, as it did.
        exclude = super()._get_validation_exclusions()
        return exclude if self._errors else {*exclude, "client_id"}

    @property
    def changes(self) -> dict:
        return {name: self.cleaned_data[name] for name in BrokerAccountBaseForm.Meta.fields}


class BrokerAccountEditForm(BrokerAccountBaseForm):
    credential_hint = "Leave blank to keep the stored value."

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        watch_changes(self, self.Meta.fields)  # a save writes only what the trader changed

    @property
    def changes(self) -> dict:
        # Only what the trader changed: writing back the rest as the page showed it would undo a
        # limit staff lowered meanwhile.
        return {name: value for name, value in super().changes.items() if name in self.changed_data}


class ApiKeyCreateForm(OneTimeTokenForm):
    # The page showing a new key's secret answers the POST that made it: a reload or Back to it sends
    # the same form again, which must not make a second live key the trader never saw.
    EXPIRY_CHOICES = [("", "Never"), ("7", "7 days"), ("30", "30 days"), ("90", "90 days"), ("365", "1 year")]
    name = forms.CharField(max_length=100)
    expires_in_days = forms.TypedChoiceField(
        choices=EXPIRY_CHOICES, coerce=int, empty_value=None, required=False, label="Expires"
    )


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["timezone"]
