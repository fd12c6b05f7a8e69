"""Forms of the portfolio pages."""

from datetime import date, datetime, time, timedelta

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator
from django.utils import timezone

from accounts.selectors import broker_accounts_of
from brokers.base import IST

IST_DAYS = "ist"  # the ``days`` parameter: the dates are IST trading days
DATE_RANGE = [MinValueValidator(date(1970, 1, 1)), MaxValueValidator(date(2999, 12, 31))]


class TradeFilterForm(forms.Form):
    account = forms.ModelChoiceField(queryset=None, required=False, empty_label="All accounts")
    symbol = forms.CharField(max_length=64, required=False, widget=forms.TextInput(attrs={"placeholder": "Symbol"}))
    # Bounded: the day after 9999-12-31, or 0001-01-01 in UTC, does not exist (a 500, not a filter).
    date_from = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}), validators=DATE_RANGE
    )
    date_to = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}), validators=DATE_RANGE
    )
    # Kept by the form: a trading day's list (``days=ist``) filtered again stays that IST day.
    days = forms.ChoiceField(choices=[("", ""), (IST_DAYS, IST_DAYS)], required=False, widget=forms.HiddenInput)

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].queryset = broker_accounts_of(user)

    def selector_kwargs(self) -> dict:
        """Keyword arguments for ``selectors.trades_of``; a bad filter value is left out (and shown).

        Dates are days in the viewer's timezone, both ends included, as the times on the page are shown;
        IST trading days with ``days=ist`` (the portfolio page's per-day rows link so: a row counts the
        fills of its IST day, which in another timezone straddles two dates).
        """
        self.is_valid()
        data = self.cleaned_data
        zone = IST if data.get("days") == IST_DAYS else timezone.get_current_timezone()
        start, end = data.get("date_from"), data.get("date_to")
        return {
            "account": data.get("account"),
            "symbol": data.get("symbol") or None,
            "since": datetime.combine(start, time.min, tzinfo=zone) if start else None,
            "until": datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone) if end else None,
        }
